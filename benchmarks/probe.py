"""Per-core probe: how close one training thread comes to this CPU's practical limit, for every kernel setting
tried, and the per-core throughput at N = cores against the paper's code path. Prints one table.

    .venv/bin/python benchmarks/probe.py              # the table on this machine, 5 repeats (about 8 minutes)
    .venv/bin/python benchmarks/probe.py --quick      # 2 repeats, fewer images: checks that it runs
    .venv/bin/python benchmarks/probe.py --json out.json --skip-scaling

Every measurement is a fresh process bound to one core with one thread (the settings are environment variables
that must be set before TensorFlow starts). Each repeat runs, in turn: the 1-thread float32 matrix multiply (the
practical per-core limit), then one training process per setting; so the settings are interleaved and a busy
spell on a shared machine touches all of them alike. A training process runs `training.fit` (our input pipeline
and steps_per_execution) for 2 epochs on the first --train-images images, with seed = the repeat's number, and is
timed in its second epoch (the first carries graph tracing); then it scores the 10k test images. On an AVX-512 CPU
the AVX2-only kind is emulated by capping oneDNN's kernels with ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN's dispatch and
kernels, not the other CPU's cores, caches or TensorFlow's own Eigen kernels, which are compiled for AVX anyway).
Then one oneDNN-verbose run of the chosen setting gives the time of each convolution per step and its GFLOP/s.
Last, benchmarks/scaling.py's jobs at N = cores: ours and the paper's, interleaved, --repeats times.
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
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import scaling  # noqa: E402  (the scaling benchmark's jobs and the matrix-multiply probe worker)
from mpi_ensemble import model, provenance, runtime, startup  # noqa: E402

FLOPS = model.training_flops_per_image()  # per training image; model.gflops adds the validation passes
AVX2_CAP = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
# The AVX2 kind's matrix-multiply limit on an AVX-512 CPU: OpenBLAS' Haswell (AVX2 + FMA) kernels.
AVX2_BLAS = {"OPENBLAS_CORETYPE": "Haswell"}
# What the paper's code gets on an AVX2-only CPU: TensorFlow leaves oneDNN off there.
AVX2_TF_DEFAULT = {"TF_ENABLE_ONEDNN_OPTS": "0", **AVX2_CAP}
TARGET_FRACTION = 0.6
PROFILED = ("auto (chosen)", "AVX2 emulated, auto")


def settings_to_try(flags):
    """(name, environment) of every setting measured on this CPU: oneDNN off (TensorFlow's generic kernels, its
    default on an AVX2-only CPU), the automatic choice, and a plain `fit` on arrays (Keras' own
    autotuned input pipeline, one step per call); on an AVX-512 CPU the last two for the emulated AVX2 kind
    instead. TensorFlow's own default on this CPU is one of the first two (`tensorflow_default_onednn`)."""
    plain = {"PROBE_PIPELINE": "keras"}
    rows = [("oneDNN off (Eigen)", {runtime.CPU_TUNING_ENV: "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "0"}),
            ("auto (chosen)", {runtime.CPU_TUNING_ENV: "auto"})]
    if emulates_avx2(flags):
        rows.append(("AVX2 emulated, auto", {runtime.CPU_TUNING_ENV: "auto", **AVX2_CAP}))
        rows.append(("AVX2 emulated, plain fit", {runtime.CPU_TUNING_ENV: "auto", **AVX2_CAP, **plain}))
    else:
        rows.append(("plain fit, auto", {runtime.CPU_TUNING_ENV: "auto", **plain}))
    return rows


def tensorflow_default_onednn():
    """Whether TensorFlow, left to itself, turns oneDNN on in this CPU (its own verdict, in a fresh process)."""
    code = "from mpi_ensemble import startup; import tensorflow; print(startup.onednn_enabled())"
    out = run_python(["-c", code], clean_env({runtime.CPU_TUNING_ENV: "tensorflow"}))
    return out.stdout.strip().splitlines()[-1] == "True"


def emulates_avx2(flags):
    return runtime.cpu_kind(flags) == "avx512"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, help="rounds of every measurement (default 5; --quick 2)")
    p.add_argument("--train-images", type=int, help="images per training epoch of the probe (default 6400)")
    p.add_argument("--scaling-train-images", type=int, help="training set of the N = cores jobs (default 12000)")
    p.add_argument("--skip-scaling", action="store_true", help="leave out ours vs the paper at N = cores")
    p.add_argument("--skip-profile", action="store_true", help="leave out the oneDNN-verbose profile")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", help="also write every measurement to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one training measurement, arrays folder
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = (2, 3200, 6000) if args.quick else (5, 6400, 12000)
    for name, value in zip(("repeats", "train_images", "scaling_train_images"), quick):
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


# --- one training measurement, in its own process ----------------------------------------------------------------


def worker(folder, train_images, seed, core):
    """Train 2 epochs on one core with one thread; print the second epoch's wall and CPU rates and the accuracy."""
    os.sched_setaffinity(0, {core})
    keras = startup.import_keras(1)
    import numpy as np

    from mpi_ensemble import training

    x = np.load(Path(folder) / "train_x.npy", mmap_mode="r")[:train_images]
    y = np.load(Path(folder) / "train_y.npy", mmap_mode="r")[:train_images]

    class CpuTimer(keras.callbacks.Callback):
        seconds, waits = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.wait = time.process_time(), runqueue_seconds()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.process_time() - self.start)
            self.waits.append(runqueue_seconds() - self.wait)

    settings = {"epochs": 2, "batch_size": 64, "validation_split": 0.0, "precision": "float32",
                # PROBE_STEPS_PER_EXECUTION: to try other values by hand (1 measured 3-4 % slower than 16)
                "steps_per_execution": int(os.environ.get("PROBE_STEPS_PER_EXECUTION", training.STEPS_PER_EXECUTION))}
    if os.environ.get("PROBE_PIPELINE") == "keras":
        net, facts = plain_fit(keras, np.asarray(x), np.asarray(y), seed, [CpuTimer()])
    else:
        net, facts = training.fit(keras, x, y, seed, settings, callbacks=[CpuTimer()])
    test_x, test_y = np.load(Path(folder) / "test_x.npy"), np.load(Path(folder) / "test_y.npy")
    accuracy = float((training.predict(net, test_x).argmax(axis=1) == test_y).mean())
    print(json.dumps({"wall_s": facts["epoch_seconds"][-1], "cpu_s": CpuTimer.seconds[-1],
                      "images": facts.get("train_images", len(x)), "validation_images": facts.get("validation_images", 0),
                      "runqueue_s": CpuTimer.waits[-1],
                      "accuracy": accuracy, "kernel_settings": startup.kernel_settings()}))


def runqueue_seconds():
    """Seconds this process's threads have spent runnable but waiting for a CPU (/proc schedstat run_delay):
    the time other load took from us, as opposed to time our threads slept (a stall)."""
    total = 0
    for stat in Path("/proc/self/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):  # a thread that ended meanwhile
            continue
    return total / 1e9


def plain_fit(keras, x, y, seed, callbacks):
    """What the paper's script runs: `fit` on in-memory arrays (Keras builds an autotuned
    tf.data pipeline), one train step per call."""
    class WallTimer(keras.callbacks.Callback):
        seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    keras.utils.set_random_seed(seed)
    net = model.build_model(keras, input_shape=x.shape[1:])
    net.fit(x, y, batch_size=64, epochs=2, shuffle=True, verbose=0, callbacks=[WallTimer(), *callbacks])
    return net, {"epoch_seconds": WallTimer.seconds}


def clean_env(extra):
    """No inherited kernel or thread variables: each setting is exactly what its row says."""
    env = {k: v for k, v in os.environ.items()
           if k not in runtime.KERNEL_ENV and k not in runtime.THREAD_ENV and k not in scaling.BLAS_ENV}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT / "src"), **extra}


def run_python(args, env, timeout=600):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        sys.exit(f"probe process failed ({out.returncode}): {' '.join(args)}\n{out.stderr[-3000:]}")
    return out


def worker_args(folder, train_images, seed, core):
    return [__file__, "--worker", str(folder), "--train-images", str(train_images), "--seed", str(seed),
            "--core", str(core)]


def last_json(stdout):
    """The worker's result: its last JSON line (oneDNN's verbose lines share its stdout)."""
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith("{")))


def train_once(folder, env, train_images, seed, core):
    out = run_python(worker_args(folder, train_images, seed, core), clean_env(env))
    return rates(last_json(out.stdout))


def rates(result):
    """A measurement's GFLOP/s per wall and per CPU second: summary.csv's formula (model.gflops) for the one epoch
    timed, with the validation passes its time holds (none in the probe's own runs)."""
    for key, seconds in (("gflops", "wall_s"), ("cpu_gflops", "cpu_s")):
        result[key] = model.gflops(result["images"], result.get("validation_images", 0), 1, result[seconds])
    result["busy"] = result["cpu_s"] / result["wall_s"]  # < 1 on a quiet machine: the core sat idle (a stall)
    result["waited"] = result["runqueue_s"] / result["wall_s"]  # > 0: other load held the core
    return result


def matmul_once(core, seconds=1.0, extra=None):
    """GFLOP/s of one single-threaded float32 1024x1024 matrix multiply loop on `core` (NumPy's BLAS)."""
    env = clean_env({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(extra or {})})
    out = run_python([str(ROOT / "benchmarks" / "scaling.py"), "--probe-worker", str(core), "--probe-seconds",
                      str(seconds)], env)
    return json.loads(out.stdout)


# --- the oneDNN profile -------------------------------------------------------------------------------------------


def conv_flops(shape):
    """Forward FLOPs of one oneDNN convolution from its verbose problem string (mb64_ic32oc64_ih13oh11kh3...)."""
    import re

    get = {k: int(v) for k, v in re.findall(r"(mb|ic|oc|oh|ow|kh|kw)(\d+)", shape)}
    return 2 * get["mb"] * get["ic"] * get["oc"] * get["oh"] * get["ow"] * get["kh"] * get["kw"]


def profile_lines(text, batch=64):
    """Time per training step of each oneDNN primitive (kind, pass, implementation, problem) from ONEDNN_VERBOSE=1
    output, and each convolution's GFLOP/s; the test-set predictions (other batch sizes) are left out."""
    total, count = defaultdict(float), defaultdict(int)
    for line in text.splitlines():
        if not line.startswith("onednn_verbose,v1,primitive,exec,cpu,"):
            continue
        parts = line.split(",")
        kind, impl, prop, shape, ms = parts[5], parts[6], parts[7], parts[-2], float(parts[-1])
        if f"mb{batch}" not in shape:
            continue
        total[(kind, prop, impl, shape)] += ms
        count[(kind, prop, impl, shape)] += 1
    steps = max((count[k] for k in count if k[0] == "convolution"), default=1)
    rows = []
    for key, ms in sorted(total.items(), key=lambda kv: -kv[1]):
        kind, prop, impl, shape = key
        per_step = ms / steps
        gflops = conv_flops(shape) / (per_step / 1e3) / 1e9 if kind == "convolution" else None
        rows.append({"primitive": kind, "pass": prop, "impl": impl, "problem": shape.split("kh")[0],
                     "ms_per_step": per_step, "gflops": gflops})
    return rows, steps


def profile(folder, env, train_images, core):
    """One run of a setting with ONEDNN_VERBOSE=1: where a training step's time goes."""
    out = run_python(worker_args(folder, train_images, 0, core), clean_env({**env, "ONEDNN_VERBOSE": "1"}))
    result = last_json(out.stdout)
    rows, steps = profile_lines(out.stdout)
    step_ms = result["wall_s"] / (result["images"] / 64) * 1e3  # the verbose run's own (slowed) steady step
    return {"rows": rows, "steps": steps, "step_ms": step_ms, "onednn_ms": sum(r["ms_per_step"] for r in rows)}


# --- the table ----------------------------------------------------------------------------------------------------


def spread(values, fmt="{:.1f}"):
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def setting_rows(names, runs, limits, chosen):
    """One row per setting: median, spread and worst fraction of the matmul limit; accuracy over the repeats'
    seeds, and the same-seed accuracy difference against the chosen setting."""
    rows = []
    for name in names:
        group = runs[name]
        gflops = [r["gflops"] for r in group]
        acc = [r["accuracy"] for r in group]
        diffs = [a["accuracy"] - b["accuracy"] for a, b in zip(group, runs[chosen])]
        limit = limits["AVX2 (OpenBLAS Haswell)" if name.startswith("AVX2") else "native"]
        rows.append({
            "setting": name, "repeats": len(group), "gflops": statistics.median(gflops),
            "gflops_spread": spread(gflops),
            "cpu_gflops": statistics.median(r["cpu_gflops"] for r in group),
            "busy": spread([r["busy"] for r in group], "{:.2f}"), "waited": max(r["waited"] for r in group),
            "fraction": statistics.median(gflops) / limit, "worst_fraction": min(gflops) / limit,
            "met": "yes" if min(gflops) / limit >= TARGET_FRACTION else "NO",
            "accuracy": statistics.mean(acc), "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else None,
            "same_seed_diff": statistics.mean(diffs),
            "env": " ".join(f"{k}={v}" for k, v in sorted(group[0]["kernel_settings"]["env"].items())),
        })
    return rows


SETTING_COLUMNS = [("setting", "{}"), ("repeats", "{}"), ("gflops", "{:.1f}"), ("gflops_spread", "{}"),
                   ("cpu_gflops", "{:.1f}"), ("busy", "{}"), ("waited", "{:.2f}"), ("fraction", "{:.2f}"),
                   ("worst_fraction", "{:.2f}"), ("met", "{}"),
                   ("accuracy", "{:.4f}"), ("accuracy_sd", "{:.4f}"), ("same_seed_diff", "{:+.4f}")]
PROFILE_COLUMNS = [("primitive", "{}"), ("pass", "{}"), ("impl", "{}"), ("problem", "{}"), ("ms_per_step", "{:.3f}"),
                   ("gflops", "{:.1f}")]


def machine_lines(flags, cores):
    versions = provenance.package_versions()
    return [f"# {platform.node()}: {provenance.cpu_model()}, {cores} cores allowed; kind {runtime.cpu_kind(flags)}",
            f"# ISA flags: {' '.join(provenance.isa_flags(flags))}",
            "# versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            f"# auto settings for this CPU: {runtime.cpu_settings(flags, 'auto')}; "
            f"for the other kinds: {runtime.CPU_KIND_SETTINGS}"]


def loadavg():
    return Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").exists() else "?"


def scaling_rows(args, work, cores, pairs):
    """Ours and the paper's code path at N = cores, interleaved, as benchmarks/scaling.py runs them; once per
    (label suffix, the paper's extra env, ours' extra env) in `pairs`."""
    bench_args = scaling.parse_args(["--repeats", str(args.repeats), "--epochs", "2", "--train-images",
                                     str(args.scaling_train_images), "--precision", "float32"])
    (work / "scaling").mkdir()
    bench = scaling.Bench(bench_args, work / "scaling")
    runs = []
    for rep in range(args.repeats):
        for suffix, paper_env, ours_env in pairs:
            runs.append(bench.paper(cores, rep, env=paper_env, label="paper" + suffix))
            # not scored: the settings' accuracy is in the 1-thread table, and the vote job would cost time
            runs.append(bench.ours(cores, rep, "float32", env=ours_env, label="ours" + suffix, score=False))
    rows = scaling.median_rows(runs)
    for row in rows:
        row["img_s_core_spread"] = spread([r["img_s_core"] for r in runs if r["impl"] == row["impl"]], "{:.0f}")
    return rows, runs


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker, args.train_images, args.seed, args.core)
    flags = runtime.cpu_flags()
    cores = runtime.available_cores()
    core = sorted(os.sched_getaffinity(0))[-1]
    tried = settings_to_try(flags)
    names = [name for name, _ in tried]
    started = time.perf_counter()
    print("\n".join(machine_lines(flags, cores)))
    print(f"# TensorFlow's own default on this CPU: oneDNN {'on' if tensorflow_default_onednn() else 'off'} "
          "(so today's speed is that row's)")
    print(f"# load before: {loadavg()}; {args.repeats} repeats, {args.train_images} images per epoch, "
          f"1 thread on core {core}", flush=True)
    runs, limits, blas_cores = defaultdict(list), defaultdict(list), defaultdict(set)
    blas = {"native": {}, **({"AVX2 (OpenBLAS Haswell)": AVX2_BLAS} if emulates_avx2(flags) else {})}
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        work = Path(tmp)
        _, arrays = scaling.prepare_data(work, max(args.train_images, args.scaling_train_images), 10000)
        for rep in range(args.repeats):
            for kind, extra in blas.items():
                result = matmul_once(core, extra=extra)
                limits[kind].append(result["gflops"])
                blas_cores[kind].add(result["blas_core"])
            for name, env in tried:
                runs[name].append(train_once(work, env, args.train_images, rep, core))
            print(f"# repeat {rep + 1}/{args.repeats}: matmul {limits['native'][-1]:.1f} GFLOP/s; "
                  + "; ".join(f"{n} {runs[n][-1]['gflops']:.1f}" for n in names), flush=True)
        chosen_profiles = {}
        if not args.skip_profile:
            for name, env in tried:
                if name in PROFILED:
                    chosen_profiles[name] = profile(work, env, args.train_images, core)
        pairs = [("", {}, {})]
        if emulates_avx2(flags):
            pairs.append((" AVX2 emulated", AVX2_TF_DEFAULT, AVX2_CAP))
        scale_rows, scale_runs = ([], []) if args.skip_scaling or cores < 2 else scaling_rows(args, work, cores, pairs)
    medians = {kind: statistics.median(values) for kind, values in limits.items()}
    rows = setting_rows(names, runs, medians, "auto (chosen)")
    for kind, values in limits.items():
        print(f"\n1-thread float32 matmul, {kind} (NumPy 1024x1024, the practical per-core limit): median "
              f"{medians[kind]:.1f} GFLOP/s, spread {spread(values)} over {len(values)} repeats; OpenBLAS core "
              f"{', '.join(sorted(blas_cores[kind]))}", end="")
    print()
    print(f"\n1-thread training, GFLOP/s ({FLOPS / 1e6:.2f} MFLOP per image, steady epoch, wall time):")
    print(scaling.table(rows, SETTING_COLUMNS))
    for row, (_, env) in zip(rows, tried):
        pipeline = " (plain fit: Keras' own pipeline)" if env.get("PROBE_PIPELINE") == "keras" else ""
        print(f"  {row['setting']}: {row['env']}{pipeline}")
    for name, prof in chosen_profiles.items():
        print(f"\nprofile of '{name}' (ONEDNN_VERBOSE=1, {prof['steps']} steps of batch 64; verbose step "
              f"{prof['step_ms']:.2f} ms, of which oneDNN primitives {prof['onednn_ms']:.2f} ms):")
        print(scaling.table(prof["rows"][:14], PROFILE_COLUMNS))
    if scale_rows:
        print(f"\nper-core throughput at N = {cores} (benchmarks/scaling.py's jobs, {args.scaling_train_images} "
              f"images, 2 epochs, {args.repeats} repeats interleaved):")
        print(scaling.table(scale_rows, [("impl", "{}"), ("ranks", "{}"), ("threads", "{}"), ("precision", "{}"),
                                         ("repeats", "{}"), ("fit_s", "{:.2f}"), ("img_s_core", "{:.0f}"),
                                         ("img_s_core_spread", "{}"), ("gflops_core", "{:.1f}"),
                                         ("img_cpu_s", "{:.0f}"), ("warmup_s", "{:.2f}"), ("accuracy", "{:.4f}")]))
        for suffix, _, _ in pairs:
            ours, paper = (scaling.find(scale_rows, impl + suffix, cores) for impl in ("ours", "paper"))
            ratio = ours["img_s_core"] / paper["img_s_core"]
            print(f"ours / paper{suffix}, images/s per core at N = {cores}: {ratio:.2f}x (target 1.5x: "
                  f"{'met' if ratio >= 1.5 else 'NOT met'}); per fit CPU-second "
                  f"{ours['img_cpu_s'] / paper['img_cpu_s']:.2f}x")
    print(f"\n# load after: {loadavg()}; {time.perf_counter() - started:.0f} s")
    print("gflops: median over repeats; gflops_spread: min-max; cpu_gflops: the same per CPU-second of the process "
          "(less disturbed by other load); busy: CPU seconds / wall seconds of the timed epoch, min-max (below 1 "
          "with waited ~0: the core sat idle, a stall); waited: the most any repeat's threads waited for a CPU "
          "held by other load, per wall second; fraction: of the matmul median (worst_fraction: the slowest repeat; "
          f"target >= {TARGET_FRACTION}); accuracy: mean over the repeats' seeds 0..{args.repeats - 1} (sd: the "
          "seed-to-seed spread); same_seed_diff: mean same-seed accuracy minus the chosen setting's.")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "flags": sorted(flags), "limits": limits,
                                               "runs": runs, "rows": rows, "profiles": chosen_profiles,
                                               "scaling_rows": scale_rows, "scaling_runs": scale_runs}, indent=2))


if __name__ == "__main__":
    main()
