"""Resume benchmark: what a rerun of a killed training job costs against the full job. Prints a table.

    .venv/bin/python benchmarks/resume.py                        # 60k images, 5 epochs, killed in epoch 3
    .venv/bin/python benchmarks/resume.py --train-images 6000    # a quick look (start-up dominates: see below)

For each kind of job (sequential, a 2-rank ensemble, 2-rank data-parallel), as the workflow runs it
(`python -m mpi_ensemble train_*` with `--checkpoint-dir`, MPI jobs under `mpiexec`):
  full    the job uninterrupted;
  killed  the job again, one rank (the last) SIGKILLed as epoch `--kill-epoch` starts (the test hook holds it
          there and announces it, so nothing is timed by sleeping);
  rerun   the same command: it resumes after epoch kill-epoch - 1.
It reports the full and the rerun job's wall seconds and summed fit() seconds, the rerun's fraction of each, the
goal (remaining epochs / epochs + 10 %) and whether the resumed weights' SHA-256 equals the full run's.

A rerun pays the process start (Python, TensorFlow, MPI) and the graph tracing of its first epoch again, which the
fraction of the wall time shows; with small subsets they dominate and the goal cannot be met by design.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mpi_ensemble import data, faults, provenance  # noqa: E402  (no TensorFlow in this process)

BIN = Path(sys.executable).parent
KINDS = ("sequential", "ensemble", "data_parallel")
COMMAND = {"sequential": "train_sequential", "ensemble": "train_mpi", "data_parallel": "train_data_parallel"}


def goal(epochs, kill_epoch):
    """The target fraction: the epochs left to train (the killed one included) over all, plus 10 %."""
    return (epochs - (kill_epoch - 1)) / epochs + 0.10


def command(kind, arrays, out, checkpoints, args):
    used = {k: v for k, v in arrays.items() if kind != "ensemble" or k.startswith("train")}  # the vote scores
    common = ["-m", "mpi_ensemble", COMMAND[kind], "--seed", "0", "--epochs", str(args.epochs), "--batch-size",
              str(args.batch_size), "--validation-split", "0.2", "--checkpoint-dir", str(checkpoints),
              *(f"--{k.replace('_', '-')}={v}" for k, v in used.items())]
    if kind == "sequential":
        return [str(BIN / "python"), *common, "--threads", "1", "--job-cores", "1",
                "--model", str(out / "model.keras"), "--result", str(out / "result.json"),
                "--history", str(out / "history.csv")]
    return [str(BIN / "mpiexec"), "-n", str(args.ranks), "-bind-to", "core:1", str(BIN / "python"), "-m", "mpi4py",
            *common, "--threads", "1", "--job-cores", str(args.ranks), "--out-dir", str(out)]


def records_of(kind, out, ranks):
    if kind == "sequential":
        result = json.loads((out / "result.json").read_text())
        return [{**result["rank_timing"][0], "resumed_from_epoch": result["resumed_from_epoch"]}]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def run(cmd, env=None, hold=None, rank=0):
    """Wall seconds of one job; with `hold`, SIGKILL `rank` once it announces its hold, and expect a failure."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if hold:
        announce = Path(f"{hold}.rank{rank}")
        while not announce.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the job ended before its hold:\n{proc.stdout.read()[-3000:]}")
            time.sleep(0.05)
        os.kill(int(announce.read_text().split()[0]), signal.SIGKILL)
    output, _ = proc.communicate()
    if (proc.returncode == 0) == bool(hold):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{output[-3000:]}")
    return time.perf_counter() - start


def measure(kind, arrays, work, args):
    ranks = 1 if kind == "sequential" else args.ranks
    checkpoints, full_out, cut_out = work / "checkpoints" / kind, work / kind / "full", work / kind / "cut"
    full_wall = run(command(kind, arrays, full_out, checkpoints, args))
    hold = work / f"hold-{kind}"
    env = {faults.HOLD_ENV: str(ranks - 1), faults.HOLD_FILE_ENV: str(hold),
           faults.HOLD_EPOCH_ENV: str(args.kill_epoch)}
    run(command(kind, arrays, cut_out, checkpoints, args), env=env, hold=hold, rank=ranks - 1)
    rerun_wall = run(command(kind, arrays, cut_out, checkpoints, args))
    full, rerun = records_of(kind, full_out, ranks), records_of(kind, cut_out, ranks)
    full_fit = max(r["fit_seconds"] for r in full)
    rerun_fit = max(r["fit_seconds"] for r in rerun)
    return {"kind": kind, "ranks": ranks, "killed_in_epoch": args.kill_epoch,
            "resumed_from": [r["resumed_from_epoch"] for r in rerun],
            "full_wall_s": full_wall, "rerun_wall_s": rerun_wall, "wall_fraction": rerun_wall / full_wall,
            "full_fit_s": full_fit, "rerun_fit_s": rerun_fit, "fit_fraction": rerun_fit / full_fit,
            "goal": goal(args.epochs, args.kill_epoch),
            "full_sha256": [r["weights_sha256"] for r in full], "rerun_sha256": [r["weights_sha256"] for r in rerun]}


def print_table(rows, args):
    print(f"\nresume benchmark: {args.train_images} training images, {args.epochs} epochs, batch {args.batch_size}, "
          f"1 thread per rank; killed as epoch {args.kill_epoch} starts")
    facts = provenance.host_facts()
    print(f"host {facts['host']}, {facts['cpu_model']}, {facts['cpu_count']} CPUs, "
          f"TensorFlow {facts['versions'].get('tensorflow-cpu', facts['versions'].get('tensorflow'))}, "
          f"Keras {facts['versions'].get('keras')}")
    print(f"{'job':<14} {'resumed':>8} {'full s':>8} {'rerun s':>8} {'wall %':>7} {'fit s':>7} {'rerun fit':>9} "
          f"{'fit %':>6} {'goal %':>7} {'met':>9} {'same weights':>12}")
    for r in rows:
        met = ("fit" if r["fit_fraction"] <= r["goal"] else "") + ("+wall" if r["wall_fraction"] <= r["goal"] else "")
        print(f"{r['kind']:<14} {','.join(map(str, r['resumed_from'])):>8} {r['full_wall_s']:>8.1f} {r['rerun_wall_s']:>8.1f} "
              f"{100 * r['wall_fraction']:>6.1f}% {r['full_fit_s']:>7.1f} {r['rerun_fit_s']:>9.1f} "
              f"{100 * r['fit_fraction']:>5.1f}% {100 * r['goal']:>6.1f}% {met or 'no':>9} "
              f"{str(r['full_sha256'] == r['rerun_sha256']):>12}")
    for r in rows:
        print(f"{r['kind']}: uninterrupted {r['full_sha256']}\n{'':<{len(r['kind'])}}  resumed       {r['rerun_sha256']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-images", type=int, default=60000)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--kill-epoch", type=int, default=3, help="the epoch (from 1) whose start the last rank dies at")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ranks", type=int, default=2, help="world size of the ensemble and data-parallel jobs")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--json", help="also write the measurements to this JSON file")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="resume-bench-"))
    try:
        arrays = {name: work / f"{name}.npy" for name in data.ARRAY_NAMES}
        bundled = ROOT / "data" / "mnist"
        data.preprocess([bundled / n for n in data.file_names("mnist")], arrays, "mnist", args.train_images,
                        args.test_images)
        rows = [measure(kind, arrays, work, args) for kind in args.kinds]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
