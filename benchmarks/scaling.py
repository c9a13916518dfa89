"""Scaling benchmark: the paper's code path against ours, on this machine, in one run. Prints a table.

    .venv/bin/python benchmarks/scaling.py                      # N = 1 and N = cores, 3 repeats, 2 epochs, 60k
    .venv/bin/python benchmarks/scaling.py --quick              # a one-minute check that everything runs
    .venv/bin/python benchmarks/scaling.py --ranks 1 2 4 8 16 --skip-paper    # a sweep of ours alone
    KERAS_BACKEND=torch .venv/bin/python benchmarks/scaling.py --skip-paper  # where TensorFlow is absent

For every world size N it runs, each `--repeats` times, as separate `mpiexec -n N` jobs:
  paper    benchmarks/paper_rank.py: float64 input, one-hot labels, default threading, no binding;
  ours     `python -m mpi_ensemble train_mpi`: cores // N threads per rank, each rank bound to its own cores;
           once per --precision;
  ours-1t  ours at N = 1 with one thread on one core, once per --precision: the reference of the speed-up and
           the ceiling of the per-core throughput at N = cores.
It reports medians over the repeats of: the slowest rank's fit() seconds, training images per second per core,
CPU seconds of all ranks, peak RSS of the largest rank, the job's wall seconds, and the test accuracy of the
majority vote (first repeat). Then the ratios against the project's speed targets, and a pure matrix-multiply probe of how
well this machine's cores scale at all (1 process alone vs one per core at once).

Timings are only as good as the machine is quiet: on a shared machine, read `cpu_s` beside `fit_s`.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mpi_ensemble import data, model, runtime  # noqa: E402  (numpy-only modules: no TensorFlow here)

BIN = Path(sys.executable).parent
PRECISION_TAG = {"float32": "fp32", "mixed_bfloat16": "bf16"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", help="world sizes (default: 1 and the number of cores)")
    p.add_argument("--repeats", type=int, help="runs per configuration; medians are reported (default 3)")
    p.add_argument("--epochs", type=int, help="default 2")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-images", type=int, help="first N training images, split into shards (default 60000)")
    p.add_argument("--test-images", type=int, help="default 10000")
    p.add_argument("--precision", nargs="+", default=None, choices=sorted(PRECISION_TAG),
                   help="ours' precisions (default: float32, plus mixed_bfloat16 where the CPU has native bf16)")
    p.add_argument("--skip-paper", action="store_true", help="leave out the paper's code path")
    p.add_argument("--skip-probe", action="store_true", help="leave out the matrix-multiply probe")
    p.add_argument("--probe-seconds", type=float, default=3.0)
    p.add_argument("--quick", action="store_true", help="defaults of 6000 training / 1000 test images, 1 epoch, "
                   "1 repeat: checks that it runs, proves nothing")
    p.add_argument("--json", help="also write every measurement to this JSON file")
    p.add_argument("--work-dir", help="keep data and models here (default: a temporary folder)")
    p.add_argument("--probe-worker", type=int, help=argparse.SUPPRESS)  # internal: one matmul process on core N
    args = p.parse_args(argv)
    defaults = (6000, 1000, 1, 1) if args.quick else (60000, 10000, 2, 3)
    for name, value in zip(("train_images", "test_images", "epochs", "repeats"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def default_precisions():
    from mpi_ensemble.runtime import BF16_FLAGS, cpu_flags

    return ["float32"] + (["mixed_bfloat16"] if cpu_flags() & set(BF16_FLAGS) else [])


# Variables that make OpenBLAS run another CPU's kernels (OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU halves its
# matmul): a measurement of this CPU's own limit clears them; a row that emulates another kind sets them itself.
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def clean_env(**extra):
    """The environment of a measured job: no inherited thread limits (each side sets its own, or none), and
    OpenBLAS on this CPU's own kernels."""
    env = {k: v for k, v in os.environ.items() if k not in runtime.THREAD_ENV and k not in BLAS_ENV}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT / "src"), **extra)
    return env


def run_job(cmd, log, env=None):
    """Run one measured job (`env`: extra variables); its wall time is what a user waits for. A failure stops the
    benchmark, with the log."""
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(**(env or {})))
    wall = time.perf_counter() - start
    Path(log).write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        sys.exit(f"benchmark job failed ({out.returncode}): {' '.join(map(str, cmd))}\n{(out.stdout + out.stderr)[-3000:]}")
    return wall


def prepare_data(work, train_images, test_images):
    """Our arrays (float32, memory-mappable) from the bundled IDX files: the workflow's preprocess step."""
    src = ROOT / "data" / "mnist"
    names = data.file_names("mnist")
    missing = data.missing_files(src, names)
    if missing:
        sys.exit(f"{src} lacks {', '.join(missing)}: the benchmark reads the bundled MNIST copy; restore it from git")
    outs = {name: work / f"{name}.npy" for name in data.ARRAY_NAMES}
    data.preprocess([src / name for name in names], outs, "mnist", train_images, test_images)
    return src, outs


class Bench:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.cores = runtime.available_cores()
        self.launcher = runtime.find_launcher("mpiexec", search_path=os.pathsep.join([str(BIN), os.environ["PATH"]]))
        self.flavour = runtime.launcher_flavour(self.launcher)
        self.idx_dir, self.arrays = prepare_data(work, args.train_images, args.test_images)
        self.python = sys.executable

    def paper(self, n, rep, env=None, label="paper"):
        out = self.work / f"{label}_n{n}_r{rep}.json".replace(" ", "_")
        cmd = [self.launcher, "-n", str(n), self.python, str(ROOT / "benchmarks" / "paper_rank.py"),
               "--data-dir", str(self.idx_dir), "--epochs", str(self.args.epochs),
               "--batch-size", str(self.args.batch_size), "--max-train-images", str(self.args.train_images),
               "--max-test-images", str(self.args.test_images), "--out", str(out)]
        wall = run_job(cmd, out.with_suffix(".log"), env)
        result = json.loads(out.read_text())
        return self.measure(label, n, "all", "fp64-input", result["ranks"], wall, result["ensemble_accuracy"])

    def ours(self, n, rep, precision, threads=None, env=None, label=None, score=True):
        threads = threads or runtime.threads_per_rank(self.cores, n)
        bind = not runtime.is_oversubscribed(n, threads, self.cores)
        out = self.work / f"{label or 'ours'}_n{n}_t{threads}_{precision}_r{rep}".replace(" ", "_")
        cmd = [*runtime.launch_command(self.launcher, self.flavour, n, threads, bind), self.python, "-m", "mpi4py",
               "-m", "mpi_ensemble", "train_mpi", "--threads", str(threads), "--job-cores", str(self.cores),
               "--seed", "0", "--train-x", str(self.arrays["train_x"]), "--train-y", str(self.arrays["train_y"]),
               "--epochs", str(self.args.epochs), "--batch-size", str(self.args.batch_size),
               "--validation-split", "0.2", "--precision", precision, "--out-dir", str(out)]
        wall = run_job(cmd, f"{out}.log", env)
        records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]
        accuracy = self.ensemble_accuracy(out, n) if rep == 0 and score else None
        label = label or ("ours-1t" if threads == 1 and n == 1 and self.cores > 1 else "ours")
        return self.measure(label, n, threads, PRECISION_TAG[precision], records, wall, accuracy)

    def ensemble_accuracy(self, out, n):
        """Test accuracy of the majority vote, by the workflow's own ensemble command (not timed)."""
        metrics = out / "metrics.json"
        cmd = [self.python, "-m", "mpi_ensemble", "ensemble",
               "--models", *[str(out / f"rank{r}.keras") for r in range(n)],
               "--records", *[str(out / f"rank{r}.json") for r in range(n)],
               "--test-x", str(self.arrays["test_x"]), "--test-y", str(self.arrays["test_y"]),
               "--result", str(metrics), "--probabilities", str(out / "probabilities.npy")]
        run_job(cmd, out / "ensemble.log")
        return json.loads(metrics.read_text())["metrics"]["accuracy"]

    def measure(self, impl, n, threads, precision, records, wall, accuracy):
        fit_max = max(r["fit_seconds"] for r in records)
        used = min(n * (self.cores if threads == "all" else threads), self.cores)
        images = sum(r["train_images"] for r in records) * self.args.epochs
        validated = sum(r.get("validation_images") or 0 for r in records)
        return {
            "impl": impl, "ranks": n, "threads": threads, "precision": precision, "cores_used": used,
            "fit_s": fit_max, "fit_s_mean": statistics.mean(r["fit_seconds"] for r in records),
            "img_s_core": images / fit_max / used,
            # summary.csv's formula: every training step and validation pass the fit time holds.
            "gflops_core": model.gflops(images / self.args.epochs, validated, self.args.epochs, fit_max) / used,
            "cpu_s": sum(r["cpu_seconds"] for r in records),
            "fit_cpu_s": sum(r.get("fit_cpu_seconds", float("nan")) for r in records),
            "img_cpu_s": images / sum(r.get("fit_cpu_seconds", float("nan")) for r in records),
            "rss_mb": max(r["peak_rss_mib"] for r in records), "job_s": wall, "accuracy": accuracy,
            "warmup_s": warmup_seconds(records),
        }


def warmup_seconds(records):
    """First epoch minus a steady one (the graph tracing each process pays once), slowest rank; None when the
    records have no epoch times (the paper's code) or only one epoch."""
    epochs = [r.get("epoch_seconds") or [] for r in records]
    if not all(len(e) > 1 for e in epochs):
        return None
    return max(e[0] - statistics.median(e[1:]) for e in epochs)


def median_rows(runs):
    """One row per configuration: medians over its repeats (accuracy from the first repeat)."""
    groups = {}
    for run in runs:
        groups.setdefault((run["impl"], run["ranks"], run["threads"], run["precision"]), []).append(run)
    rows = []
    for key, group in groups.items():
        row = dict(zip(("impl", "ranks", "threads", "precision"), key), cores_used=group[0]["cores_used"],
                   repeats=len(group), accuracy=next((g["accuracy"] for g in group if g["accuracy"] is not None), None))
        for field in ("fit_s", "fit_s_mean", "img_s_core", "gflops_core", "cpu_s", "fit_cpu_s", "img_cpu_s",
                      "rss_mb", "job_s", "warmup_s"):
            values = [g[field] for g in group if g.get(field) is not None]
            row[field] = statistics.median(values) if values else None
        rows.append(row)
    return rows


COLUMNS = [("impl", "{}"), ("ranks", "{}"), ("threads", "{}"), ("precision", "{}"), ("cores_used", "{}"),
           ("repeats", "{}"), ("fit_s", "{:.2f}"), ("img_s_core", "{:.0f}"), ("gflops_core", "{:.1f}"),
           ("cpu_s", "{:.1f}"), ("fit_cpu_s", "{:.1f}"), ("img_cpu_s", "{:.0f}"), ("rss_mb", "{:.0f}"), ("job_s", "{:.1f}"),
           ("warmup_s", "{:.2f}"), ("accuracy", "{:.4f}")]


def table(rows, columns):
    cells = [[name for name, _ in columns]]
    for row in rows:
        cells.append(["" if row.get(name) is None else fmt.format(row[name]) for name, fmt in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def find(rows, impl, ranks, precision=None):
    return next((r for r in rows if r["impl"] == impl and r["ranks"] == ranks
                 and (precision is None or r["precision"] == precision)), None)


def ratios(rows, cores):
    """The project's speed targets, each with its measured value (None when a needed run was skipped)."""
    out = []

    def add(name, num, den, target, key="img_s_core", invert=False):
        if num and den:
            value = (den[key] / num[key]) if invert else (num[key] / den[key])
            out.append({"ratio": name, "value": value, "target": target,
                        "met": None if target is None else value >= target})

    paper_n = find(rows, "paper", cores)
    add(f"ours fp32 / paper, img/s per core at N={cores}", find(rows, "ours", cores, "fp32"), paper_n, 1.5)
    add(f"ours bf16 / paper, img/s per core at N={cores}", find(rows, "ours", cores, "bf16"), paper_n, 2.2)
    add("ours fp32 / paper, img/s per core at N=1", find(rows, "ours", 1, "fp32"), find(rows, "paper", 1), 1.0)
    one = find(rows, "ours-1t", 1, "fp32")
    add(f"fit speed-up at N={cores} (1-thread fit / slowest rank)", find(rows, "ours", cores, "fp32"), one, 1.8,
        key="fit_s", invert=True)
    add(f"job wall speed-up at N={cores}", find(rows, "ours", cores, "fp32"), one, 1.5, key="job_s", invert=True)
    # Not a target: work per CPU-second, which a busy machine disturbs far less than wall time.
    add(f"ours fp32 / paper, images per fit CPU-second at N={cores}", find(rows, "ours", cores, "fp32"), paper_n, None,
        key="img_cpu_s")
    # Not targets: the evidence for them. One thread on one core bounds what N ranks on N cores can reach per core.
    for tag in ("fp32", "bf16"):
        single = find(rows, "ours-1t", 1, tag)
        add(f"ceiling: ours {tag} 1 thread / paper at N={cores}, img/s per core", single, paper_n, None)
        add(f"parallel efficiency: ours {tag} at N={cores} / 1 thread, img/s per core",
            find(rows, "ours", cores, tag), single, None)
    for n in sorted({r["ranks"] for r in rows if r["impl"].startswith("ours")}):
        rss = max(r["rss_mb"] for r in rows if r["impl"].startswith("ours") and r["ranks"] == n)
        out.append({"ratio": f"ours peak RSS per rank at N={n}, GiB", "value": rss / 1024, "target": 1.0,
                    "met": rss <= 1024})
    return out


def probe_worker(core, seconds):
    """One single-threaded float32 matrix multiply loop pinned to `core`; prints its GFLOP/s."""
    os.sched_setaffinity(0, {core})
    import numpy as np

    n = 1024
    rng = np.random.default_rng(core)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    print(json.dumps({"core": core, "gflops": 2 * n**3 * count / (time.perf_counter() - start) / 1e9,
                      "blas_core": blas_core()}))


def blas_core():
    """The kernel set NumPy's OpenBLAS runs (Haswell, SkylakeX, Zen...), asked from the library itself."""
    import ctypes

    with open("/proc/self/maps", encoding="utf-8") as maps:
        libs = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_",
                     "openblas_get_corename"):
            if hasattr(lib, name):
                getattr(lib, name).restype = ctypes.c_char_p
                return getattr(lib, name)().decode()
    return "unknown (not OpenBLAS)"


def matmul_probe(cores, seconds):
    """GFLOP/s of one process alone, then of one process per core at once: the machine's own scaling ceiling."""
    env = clean_env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    allowed = sorted(os.sched_getaffinity(0))

    def launch(core_list):
        procs = [subprocess.Popen([sys.executable, __file__, "--probe-worker", str(c), "--probe-seconds",
                                   str(seconds)], stdout=subprocess.PIPE, text=True, env=env) for c in core_list]
        return [json.loads(p.communicate()[0])["gflops"] for p in procs]

    # Best of three each: other load can only slow a run down, so the fastest is the closest to the machine's own.
    alone = max(launch(allowed[:1])[0] for _ in range(3))
    together = max((launch(allowed[:cores]) for _ in range(3)), key=sum)
    return {"alone_gflops": alone, "per_process_gflops": together, "scaling": sum(together) / alone,
            "per_core_efficiency": sum(together) / alone / len(together)}


def main(argv=None):
    args = parse_args(argv)
    if args.probe_worker is not None:
        return probe_worker(args.probe_worker, args.probe_seconds)
    precisions = args.precision or default_precisions()
    with tempfile.TemporaryDirectory(prefix="scaling-bench-") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench = Bench(args, work)
        cores = bench.cores
        ranks = sorted(set(args.ranks or [1, cores]))
        print(f"# {platform.node()}: {cores} cores ({runtime.available_cores()} allowed), "
              f"{Path('/proc/loadavg').read_text().split()[0] if Path('/proc/loadavg').exists() else '?'} load; "
              f"{args.train_images} train / {args.test_images} test images, {args.epochs} epoch(s), "
              f"batch {args.batch_size}, {args.repeats} repeat(s); backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}",
              flush=True)
        runs = []
        for rep in range(args.repeats):
            for n in ranks:
                if not args.skip_paper:
                    runs.append(bench.paper(n, rep))
                for precision in precisions:
                    runs.append(bench.ours(n, rep, precision))
            if cores > 1 and 1 in ranks:
                for precision in precisions:
                    runs.append(bench.ours(1, rep, precision, threads=1))
            print(f"# repeat {rep + 1}/{args.repeats} done", flush=True)
    rows = median_rows(runs)
    rows.sort(key=lambda r: (r["ranks"], r["impl"], str(r["threads"]), r["precision"]))
    print()
    print(table(rows, COLUMNS))
    checks = ratios(rows, cores)
    if checks:
        print()
        print(table([{**c, "met": {True: "yes", False: "NO", None: "-"}[c["met"]]} for c in checks],
                    [("ratio", "{}"), ("value", "{:.2f}"), ("target", "{:.2f}"), ("met", "{}")]))
    probe = None if args.skip_probe or cores < 2 else matmul_probe(cores, args.probe_seconds)
    if probe:
        print(f"\nmatmul probe (float32 1024², 1 thread per process): alone {probe['alone_gflops']:.1f} GFLOP/s; "
              f"{cores} at once {' + '.join(f'{g:.1f}' for g in probe['per_process_gflops'])} GFLOP/s "
              f"= {probe['scaling']:.2f}x the single process (efficiency {probe['per_core_efficiency']:.2f})")
    print("\nimg_s_core: training images (all ranks, all epochs; validation not counted) / slowest rank's fit s / "
          "cores_used.\nfit_s: slowest rank's fit() s; cpu_s: CPU s of all ranks' whole processes; fit_cpu_s: "
          "the same during fit() only; img_cpu_s: training images per fit CPU-second; warmup_s: first epoch minus "
          "a steady one (ours only).\nMedians over repeats; accuracy: "
          "majority vote on the test images (first repeat). matmul probe: best of 3.")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, "rows": rows, "checks": checks,
                                               "probe": probe}, indent=2))


if __name__ == "__main__":
    main()
