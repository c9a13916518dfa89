"""Mixed bfloat16 with the softmax computed in bfloat16 (the model before) and in float32 (the model now, as Keras'
mixed-precision guide asks), same seeds, same initial weights, same data order. Prints one table.

    .venv/bin/python benchmarks/bf16_output.py             # full MNIST, 5 epochs, seeds 0-2 (about 6 minutes)
    .venv/bin/python benchmarks/bf16_output.py --quick     # checks that it runs

Each run is the sequential baseline's training (training.fit, every core, precision mixed_bfloat16) in a fresh
process, the two variants interleaved per seed; the only difference is the output layer's dtype. Columns: test
accuracy, test cross-entropy, and how far a test image's probabilities can sum from 1 (bfloat16 keeps 8 bits of
mantissa), the saved probabilities the soft vote and the confidence tie-break use. Needs a CPU with native
bfloat16 (avx512_bf16 or amx_bf16).
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mpi_ensemble import data, provenance, runtime, startup  # noqa: E402

VARIANTS = {"softmax in bfloat16 (before)": None, "softmax in float32 (now)": "float32"}


def worker(folder, seed, epochs, output_dtype):
    keras = startup.import_keras(None, "mixed_bfloat16")
    import numpy as np

    from mpi_ensemble import model, training

    model.build_model = functools.partial(model.build_model, output_dtype=output_dtype)
    x, y = data.load_arrays(Path(folder) / "train_x.npy", Path(folder) / "train_y.npy")
    test_x, test_y = data.load_arrays(Path(folder) / "test_x.npy", Path(folder) / "test_y.npy")
    settings = {"epochs": epochs, "batch_size": 64, "validation_split": 0.2, "precision": "mixed_bfloat16"}
    net, facts = training.fit(keras, x, y, seed, settings)
    probs = training.predict(net, test_x).astype(np.float64)
    return {"accuracy": float((probs.argmax(axis=1) == test_y).mean()),
            "test_loss": float(-np.log(np.clip(probs[np.arange(len(test_y)), test_y], 1e-12, None)).mean()),
            "max_sum_error": float(np.abs(probs.sum(axis=1) - 1).max()), "output_dtype": str(probs.dtype),
            "fit_seconds": facts["fit_seconds"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--images", type=int, default=60000)
    p.add_argument("--quick", action="store_true", help="3,000 images, 1 epoch, seed 0")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        folder, seed, epochs, dtype = args.worker
        print(json.dumps(worker(folder, int(seed), int(epochs), None if dtype == "None" else dtype)))
        return
    if args.quick:
        args.seeds, args.epochs, args.images = [0], 1, 3000
    runtime.check_precision("mixed_bfloat16", runtime.cpu_flags())
    print(f"# {provenance.cpu_model()}; ISA {' '.join(provenance.isa_flags())}; versions {provenance.package_versions()}; "
          f"commit {provenance.git_commit(ROOT)}")
    print(f"# {args.images} images (80 % trained), {args.epochs} epochs, every core, mixed_bfloat16, seeds "
          f"{args.seeds}", flush=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT / "src")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bf16-") as tmp:
        outs = {name: Path(tmp) / f"{name}.npy" for name in data.ARRAY_NAMES}
        data.preprocess([ROOT / "data" / "mnist" / n for n in data.file_names("mnist")], outs, "mnist", args.images)
        for seed in args.seeds:
            for name, dtype in VARIANTS.items():
                out = subprocess.run([sys.executable, __file__, "--worker", tmp, str(seed), str(args.epochs),
                                      str(dtype)], capture_output=True, text=True, env=env, timeout=3600)
                if out.returncode != 0:
                    sys.exit(f"{name} seed {seed} failed:\n{out.stderr[-3000:]}")
                rows.append({"variant": name, "seed": seed, **json.loads(out.stdout.strip().splitlines()[-1])})
                print(json.dumps(rows[-1]), flush=True)
    print()
    for name in VARIANTS:
        runs = [r for r in rows if r["variant"] == name]
        acc = [r["accuracy"] for r in runs]
        sd = statistics.stdev(acc) if len(acc) > 1 else float("nan")
        print(f"{name:<30} accuracy {statistics.mean(acc):.4f} ± {sd:.4f} (seeds {[r['seed'] for r in runs]}: "
              f"{', '.join(f'{a:.4f}' for a in acc)}); test loss {statistics.mean(r['test_loss'] for r in runs):.4f}; "
              f"largest |sum of probabilities - 1| {max(r['max_sum_error'] for r in runs):.2e}")


if __name__ == "__main__":
    main()
