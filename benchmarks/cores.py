"""Does every core earn its keep? The workflow's own training commands on this machine, in one run, the paper's
settings (full MNIST, 5 epochs, batch 64, validation split 0.2), float32. Prints a table and writes JSON.

    .venv/bin/python benchmarks/cores.py --out benchmarks/results/cores-<machine>-<date>
    .venv/bin/python benchmarks/cores.py --quick      # a one-minute check that it runs, proves nothing

1. The paper's baseline, the sequential run on all threads, against one thread, `--repeats` times back to back
   (alternating): the fit time of each, its spread, and how many cores the fit kept busy (fit CPU s / fit s).
2. The ensemble at N = 2 (one thread per rank, each bound to its core) for each seed of `--seeds`, against the
   one-thread sequential run of the same seed: the fit speed-up (1-thread fit / slowest rank's fit) and each
   rank's GFLOP/s against the one-thread run's.
3. The first epoch: the tracing of the training and validation functions, now before the clock (warm_up_s), and
   the first epoch against a steady one, with the tracing before the clock and, as the code ran it before, inside
   the first epoch (`--seeds`' first seed, one thread).

Every number carries the machine: CPU model and flags, cores, versions, commit (the header). Run it alone: the
machine must be quiet.
"""

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import scaling  # noqa: E402  (its data preparation, job runner and per-job measures)
from mpi_ensemble import model, provenance, runtime  # noqa: E402

# The sequential command with its training functions traced inside the first epoch, as before tracing moved ahead
# of the clock: the "before" of the first-epoch cost.
COLD = ("import sys; from mpi_ensemble import cli, training; training.KerasEpochs.warm_up = lambda self: None; "
        "cli.main(sys.argv[1:])")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="back-to-back runs of each sequential baseline")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the N = 2 comparison")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-images", type=int, default=60000)
    p.add_argument("--test-images", type=int, default=10000)
    p.add_argument("--quick", action="store_true", help="6,000 images, 2 epochs, 1 repeat, 1 seed")
    p.add_argument("--out", help="folder for results.json and table.txt")
    p.add_argument("--work-dir", help="keep data and models here (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.seeds, args.epochs, args.train_images, args.test_images = 1, [0], 2, 6000, 1000
    return args


def sequential(bench, threads, seed, rep, cold=False):
    """One sequential run of the workflow's command: fit and epoch times, tracing, CPU, GFLOP/s per core used."""
    out = bench.work / f"seq_t{threads}_s{seed}_r{rep}{'_cold' if cold else ''}"
    out.mkdir(parents=True, exist_ok=True)
    args = ["train_sequential", "--threads", str(threads), "--job-cores", str(bench.cores), "--seed", str(seed),
            "--train-x", str(bench.arrays["train_x"]), "--train-y", str(bench.arrays["train_y"]),
            "--test-x", str(bench.arrays["test_x"]), "--test-y", str(bench.arrays["test_y"]),
            "--epochs", str(bench.args.epochs), "--batch-size", "64", "--validation-split", "0.2",
            "--model", str(out / "model.keras"), "--result", str(out / "result.json")]
    command = [bench.python, "-c", COLD, *args] if cold else [bench.python, "-m", "mpi_ensemble", *args]
    wall = scaling.run_job(command, out / "job.log")
    result = json.loads((out / "result.json").read_text())
    return {**measure(result["rank_timing"], result["cores_used"], bench.args.epochs), "kind": "sequential",
            "threads": str(threads), "seed": seed, "repeat": rep, "cold": cold, "job_s": wall,
            "accuracy": result["metrics"]["accuracy"]}


def ensemble(bench, seed):
    """The N = 2 ensemble's training job, one thread per rank on its own core."""
    out = bench.work / f"ens2_s{seed}"
    cmd = [*runtime.launch_command(bench.launcher, bench.flavour, 2, 1, bench.cores >= 2), bench.python, "-m",
           "mpi4py", "-m", "mpi_ensemble", "train_mpi", "--threads", "1", "--job-cores", str(bench.cores),
           "--seed", str(seed), "--train-x", str(bench.arrays["train_x"]), "--train-y", str(bench.arrays["train_y"]),
           "--epochs", str(bench.args.epochs), "--batch-size", "64", "--validation-split", "0.2",
           "--out-dir", str(out)]
    wall = scaling.run_job(cmd, f"{out}.log")
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return {**measure(records, min(2, bench.cores), bench.args.epochs), "kind": "ensemble N=2", "threads": "1",
            "seed": seed, "repeat": 0, "cold": False, "job_s": wall,
            "rank_gflops": [rank_gflops(r, bench.args.epochs) for r in records]}


def rank_gflops(record, epochs):
    return model.gflops(record["train_images"], record.get("validation_images") or 0, epochs, record["fit_seconds"])


def measure(timing, cores_used, epochs):
    """What the records of one job say: the slowest process's fit, its epochs (first against the median of the
    others), its tracing, the fit CPU of all processes over the fit's wall time (cores kept busy), GFLOP/s per core
    used (summary.csv's formula)."""
    slowest = max(timing, key=lambda t: t["fit_seconds"])
    epochs_s = slowest["epoch_seconds"]
    work = sum(model.fit_flops(t["train_images"], t.get("validation_images") or 0) for t in timing) * epochs
    return {"fit_s": slowest["fit_seconds"], "first_epoch_s": epochs_s[0],
            "steady_epoch_s": statistics.median(epochs_s[1:]) if len(epochs_s) > 1 else None,
            "warm_up_s": slowest.get("warm_up_seconds"),
            "busy_cores": sum(t.get("fit_cpu_seconds") or 0 for t in timing) / slowest["fit_seconds"],
            "gflops_core": work / slowest["fit_seconds"] / cores_used / 1e9}


def spread(values):
    values = [v for v in values if v is not None]
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values),
            "spread_pct": 100 * (max(values) - min(values)) / statistics.median(values)} if values else {}


def summarize(runs, args):
    """The figures the header promises, from the runs."""
    seq = [r for r in runs if r["kind"] == "sequential" and not r["cold"]]
    one = {r["seed"]: r for r in seq if r["threads"] == "1" and r["repeat"] == 0}
    out = {"all_threads_fit_s": spread([r["fit_s"] for r in seq if r["threads"] == "all"]),
           "one_thread_fit_s": spread([r["fit_s"] for r in seq if r["threads"] == "1" and r["seed"] == args.seeds[0]]),
           "all_threads_busy_cores": spread([r["busy_cores"] for r in seq if r["threads"] == "all"])}
    pairs = [(one[r["seed"]], r) for r in runs if r["kind"] == "ensemble N=2" and r["seed"] in one]
    out["n2_fit_speedup"] = spread([base["fit_s"] / ens["fit_s"] for base, ens in pairs])
    out["n2_rank_gflops_over_one_thread"] = spread([g / base["gflops_core"] for base, ens in pairs
                                                    for g in ens["rank_gflops"]])
    cold = [r for r in runs if r["cold"]]
    warm = [r for r in seq if r["threads"] == "1" and r["seed"] == args.seeds[0]]
    out["first_epoch_excess_s_traced_inside"] = spread([r["first_epoch_s"] - r["steady_epoch_s"] for r in cold])
    out["first_epoch_excess_s_traced_before"] = spread([r["first_epoch_s"] - r["steady_epoch_s"] for r in warm])
    out["tracing_s_before_the_clock"] = spread([r["warm_up_s"] for r in warm])
    return out


def header(bench):
    flags = runtime.cpu_flags()
    return [f"# {platform.node()}: {provenance.cpu_model()}, {bench.cores} cores allowed; "
            f"kind {runtime.cpu_kind(flags)}; ISA {' '.join(provenance.isa_flags(flags))}",
            f"# versions {provenance.package_versions()}; commit {provenance.git_commit(ROOT)}",
            f"# {bench.args.train_images} training / {bench.args.test_images} test images, {bench.args.epochs} "
            f"epochs, batch 64, float32; {bench.args.repeats} repeats of each sequential baseline; seeds "
            f"{bench.args.seeds}"]


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cores-bench-") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        run(args, scaling.Bench(args, work))


def run(args, bench):
    lines = header(bench)
    print("\n".join(lines), flush=True)
    runs = []
    for rep in range(args.repeats):  # back to back, alternating, so that a slow spell hits both
        for threads in ("all", 1):
            runs.append(sequential(bench, threads, args.seeds[0], rep))
            print(json.dumps(runs[-1]), flush=True)
    for seed in args.seeds:
        if seed != args.seeds[0]:
            runs.append(sequential(bench, 1, seed, 0))
        runs.append(ensemble(bench, seed))
        print(json.dumps(runs[-1]), flush=True)
    runs.append(sequential(bench, 1, args.seeds[0], 0, cold=True))
    figures = summarize(runs, args)
    table = lines + [f"{key}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in value.items()) for key, value in figures.items()]
    print("\n".join(table[len(lines):]))
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps({"runs": runs, "figures": figures}, indent=1) + "\n")
        (folder / "table.txt").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
