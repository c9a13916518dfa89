"""What the epoch loop costs, and why the workflow's GFLOP/s per core sit below the probe's. Prints one table.

    .venv/bin/python benchmarks/epoch_loop.py            # 60,000 images, 3 epochs, 2 repeats (about 8 minutes)
    .venv/bin/python benchmarks/epoch_loop.py --quick    # checks that it runs

One thread on one core, the sequential run's data (the first --images images: 80 % trained, 20 % validated),
each variant a fresh process, variants interleaved over the repeats:

- `one fit`: a single Keras fit(epochs=E) call with validation inside it (how training ran before per-epoch
  checkpoints; every epoch sees the same order, which costs the same);
- `epoch loop`: the workflow's loop (training.run_epochs with training.KerasEpochs): per epoch one fit() and one
  evaluate() call, each timed apart;
- `epoch loop + checkpoints`: the same, saving a checkpoint after every epoch, as every workflow job does.

From them: the first epoch's excess over a steady one (graph tracing), the validation's share of an epoch, what
the per-epoch calls cost against one fit, what a checkpoint costs, and GFLOP/s three ways: the training steps
alone in a steady epoch (what the probe measures), a steady epoch with its validation (model.fit_flops), and
summary.csv's figure over the whole fit (first epoch included).
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

from mpi_ensemble import data, model, provenance, runtime, startup  # noqa: E402

VARIANTS = ("one fit", "epoch loop", "epoch loop + checkpoints")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, help="training set (train + validation), default 60000 (--quick 3000)")
    p.add_argument("--epochs", type=int, help="default 3 (--quick 2)")
    p.add_argument("--repeats", type=int, help="default 2 (--quick 1)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", help="also write every measurement here")
    p.add_argument("--worker", nargs=2, metavar=("VARIANT", "ARRAYS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, full, quick in (("images", 60000, 3000), ("epochs", 3, 2), ("repeats", 2, 1)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


# --- one measurement, in its own process --------------------------------------------------------------------


def timed(method, seconds):
    """`method`, adding each call's wall time to the list `seconds`."""

    def call(*args, **kwargs):
        began = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - began)

    return call


def worker(variant, folder, epochs):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    keras = startup.import_keras(1)
    from mpi_ensemble import checkpoint, training

    x, y = data.load_arrays(Path(folder) / "train_x.npy", Path(folder) / "train_y.npy")
    settings = {"epochs": epochs, "batch_size": 64, "validation_split": 0.2, "precision": "float32"}
    net = training.initial_model(keras, 0, 0, x.shape[1:], settings)
    step = training.KerasEpochs(keras, net, x, y, settings, 0, 0)
    if variant == "one fit":
        return one_fit(keras, step, epochs)
    fits, evaluations = [], []
    net.fit, net.evaluate = timed(net.fit, fits), timed(net.evaluate, evaluations)
    with tempfile.TemporaryDirectory() as tmp:
        store = checkpoint.Store(Path(tmp) / "rank0", {}, log=lambda text: None) if "checkpoints" in variant else None
        facts = training.run_epochs(step, settings, store, label=variant)
    return {"epoch_seconds": facts["epoch_seconds"], "fit_seconds": facts["fit_seconds"], "fit_calls": fits,
            "evaluate_calls": evaluations, "checkpoint_seconds": facts["checkpoint_seconds"],
            "train_images": step.train_images, "validation_images": step.validation_images}


def one_fit(keras, step, epochs):
    """A single fit() over every epoch, validation inside it: one order, timed per epoch by a callback."""
    from mpi_ensemble import training

    seconds = []

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.began)

    order = training.epoch_order(step.cut, 0, 0, 0)
    began = time.perf_counter()
    step.net.fit(**training.batches(keras, step.x[:step.cut], step.y[:step.cut], 64, order), shuffle=False,
                 validation_data=step.validation["x"], epochs=epochs, verbose=0, callbacks=[EpochClock()])
    return {"epoch_seconds": seconds, "fit_seconds": time.perf_counter() - began,
            "train_images": step.train_images, "validation_images": step.validation_images}


# --- the table ------------------------------------------------------------------------------------------------


def measure(args, folder):
    runs = {v: [] for v in VARIANTS}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT / "src")}
    for rep in range(args.repeats):
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--epochs", str(args.epochs), "--worker", variant,
                                  str(folder)], capture_output=True, text=True, env=env, timeout=3600)
            if out.returncode != 0:
                sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"# repeat {rep + 1}, {variant}: fit {runs[variant][-1]['fit_seconds']:.2f} s, load "
                  f"{Path('/proc/loadavg').read_text().split()[0]}", flush=True)
    return runs


def steady(run):
    return statistics.median(run["epoch_seconds"][1:])


def summary(runs):
    """The medians over repeats of what each variant's epochs cost, and the GFLOP/s three ways."""
    med = lambda values: statistics.median(values)  # noqa: E731
    loop, one, saved = runs["epoch loop"], runs["one fit"], runs["epoch loop + checkpoints"]
    first = loop[0]
    train, val = first["train_images"], first["validation_images"]
    validation = med([statistics.median(r["evaluate_calls"][1:] or r["evaluate_calls"]) for r in loop])
    step_epoch = med([steady(r) for r in loop]) - validation
    out = {
        "steady epoch, one fit (s)": med([steady(r) for r in one]),
        "steady epoch, epoch loop (s)": med([steady(r) for r in loop]),
        "per-epoch calls against one fit (s per epoch)": med([steady(r) for r in loop]) - med([steady(r) for r in one]),
        "first epoch over a steady one: tracing (s)": med([r["epoch_seconds"][0] - steady(r) for r in loop]),
        "validation pass (s per epoch)": validation,
        "validation share of a steady epoch": validation / med([steady(r) for r in loop]),
        "checkpoint write (s per epoch)": med([r["checkpoint_seconds"] / len(r["epoch_seconds"]) for r in saved]),
        "fit time, epoch loop (s)": med([r["fit_seconds"] for r in loop]),
        "fit time, one fit (s)": med([r["fit_seconds"] for r in one]),
        "GFLOP/s, training steps of a steady epoch (the probe's)": model.gflops(train, 0, 1, step_epoch),
        "GFLOP/s, a steady epoch with its validation": model.gflops(train, val, 1, med([steady(r) for r in loop])),
        "GFLOP/s, summary.csv's (whole fit, epoch loop)": med([model.gflops(train, val, len(r["epoch_seconds"]),
                                                                            r["fit_seconds"]) for r in loop]),
    }
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.epochs)))
        return
    print(f"# {platform.node()}: {provenance.cpu_model()}; {runtime.cpu_kind(runtime.cpu_flags())} kind; ISA "
          f"{' '.join(provenance.isa_flags())}; versions {provenance.package_versions()}; commit {provenance.git_commit(ROOT)}")
    print(f"# {args.images} images (80 % trained, 20 % validated), {args.epochs} epochs, {args.repeats} repeat(s), "
          "1 thread on one core; medians over repeats", flush=True)
    with tempfile.TemporaryDirectory(prefix="epoch-loop-") as tmp:
        outs = {name: Path(tmp) / f"{name}.npy" for name in data.ARRAY_NAMES}
        data.preprocess([ROOT / "data" / "mnist" / n for n in data.file_names("mnist")], outs, "mnist",
                        args.images, 100)
        runs = measure(args, tmp)
    rows = summary(runs)
    width = max(map(len, rows))
    print()
    for name, value in rows.items():
        print(f"{name:<{width}}  {value:8.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "summary": rows}, indent=1))


if __name__ == "__main__":
    main()
