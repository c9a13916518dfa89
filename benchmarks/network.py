"""What communication costs: Allreduce measured on the test cluster's emulated network, an α–β model fitted to it,
and each way of training projected to N = 1,024 ranks. Prints tables, writes the results folder.

    # as root, with SLURM and iproute2 (as tests/test_nodes.py needs); 20-30 minutes on 2 busy cores
    .venv/bin/python benchmarks/network.py --out benchmarks/results/network-MACHINE-DATE
    .venv/bin/python benchmarks/network.py --out DIR --phase compute     # the step times alone (no cluster)
    .venv/bin/python benchmarks/network.py --out DIR --phase network     # the Allreduce sweep on the cluster
    .venv/bin/python benchmarks/network.py --out DIR --phase model       # fit, projection, figure from DIR's CSVs
    .venv/bin/python benchmarks/network.py --out DIR --phase jobs --networks 1gbit --job-ranks 2 3
    .venv/bin/python benchmarks/network.py --out DIR --check-records results/local_sgd/... --network 1gbit

Phases:
  compute  the paper's CNN, one process alone on one core with 1 thread (each rank of the test cluster has one
           CPU; the 3 nodes share this machine's cores, so steps timed on the cluster would be oversubscribed):
           CPU seconds per step of a Keras fit step at 16 and at 1 step per graph call ("local", "local_spe1":
           ensemble, local SGD), of the data-parallel step without communication ("data_parallel": gradient,
           flatten, apply), at several batch sizes, and of the copies around one weight averaging
           ("averaging"); medians over --repeats fresh processes.
  network  NodesCluster (tests/slurm_cluster.py, 3 nodes), links shaped with tc's token bucket to each rate of
           --networks (both directions of every node's link). Per network and N = 2, 3, one rank per node
           (`srun --mpi=pmi2`, the pip MPICH): Allreduce seconds from 8 B to 4 MB, with MPICH's own choice of
           algorithm and with each algorithm forced at a few sizes; bytes each rank's eth0 sent. --rounds
           interleaves the networks.
  model    α from the small messages, β by least squares (benchmarks/cost_model.py); the time per epoch of each
           method at N = 1..1024 on each network; crossovers; the figure.
  jobs     the workflow's data-parallel and local SGD commands (k = 1, 16, epoch) on the shaped cluster, one rank
           per node: their epoch and their mean Allreduce (from the rank records) against the model's.
           `--check-records` compares any job's records that count their Allreduce calls.
  calibrate  how the token bucket's size and the links' segmentation-offload size change a 1 Gbit/s link
           (2 nodes, 4 MiB and 373,288 B Allreduce): the measurements behind slurm_cluster's BURST_BYTES and
           GSO_BYTES. Not part of "all".

No latency is added: this kernel has tbf and htb but not netem, so α is what this machine's MPI and TCP stack
take for a message that carries nothing, not a switch's or a cable's delay.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

import cost_model  # noqa: E402
from mpi_ensemble import provenance, records, startup  # noqa: E402  (no TensorFlow in this process)

# name -> (label, rate in bit/s; None: not shaped)
NETWORKS = {"unshaped": ("unshaped", None), "10gbit": ("10 Gbit/s", 10e9), "1gbit": ("1 Gbit/s", 1e9)}
SIZES = [8, 64, 512, 4096, 32768, 131072, cost_model.MODEL_BYTES, 1048576, 4194304]
FORCED = ("recursive_doubling", "reduce_scatter_allgather", "ring")
FORCED_SIZES = [8, 65536, cost_model.MODEL_BYTES]
RANKS = (2, 3)
# Batch sizes timed per kind of step; "averaging" (the copies around one weight averaging) has no images.
IMAGES = {"local": [1, 4, 16, 32, 47, 64], "data_parallel": [1, 2, 4, 8, 16, 22, 32, 64],
          "local_spe1": [1, 47, 64], "averaging": [0]}
STEPS_TIMED = 64
# The least fraction of its shaped rate a network's fit must reach to be projected as measured.
CARRIED = 0.8


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="results folder (created; its CSVs are read by later phases)")
    p.add_argument("--phase", choices=["all", "compute", "network", "model", "jobs", "calibrate"], default="all")
    p.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    p.add_argument("--repeats", type=int, default=5, help="fresh processes per step measurement (default 5)")
    p.add_argument("--kinds", nargs="+", choices=list(IMAGES), default=list(IMAGES),
                   help="the kinds of step the compute phase times (default all)")
    p.add_argument("--rounds", type=int, default=2, help="sweeps over all networks, interleaved (default 2)")
    p.add_argument("--quick", action="store_true", help="1 repeat, 1 round, fewer calls: checks that it runs")
    p.add_argument("--check-records", help="a job's folder of rank{r}.json: compare with the model of --network")
    p.add_argument("--network", choices=list(NETWORKS), help="the network that job ran on (with --check-records)")
    p.add_argument("--mpi-env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra environment of the ranks (e.g. MPICH CVARs), recorded with the measurements")
    p.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="message sizes of the sweep, bytes")
    p.add_argument("--skip-forced", action="store_true", help="MPICH's own algorithm only")
    p.add_argument("--quiet-cores", type=float, default=1.2,
                   help="idle cores to wait for before each measurement (default 1.2); what was seen is recorded")
    p.add_argument("--quiet-wait", type=float, default=30, help="longest wait for them, seconds (default 30)")
    p.add_argument("--job-ranks", type=int, nargs="+", default=[2], help="world sizes of --phase jobs (default 2)")
    p.add_argument("--step-worker", nargs="+", help=argparse.SUPPRESS)  # internal: KIND CORE IMAGES...
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.rounds = 1, 1
    return args


# --- compute per step: one process alone, 1 thread, on one core --------------------------------------------------


def step_worker(kind, core, images):
    """Print one JSON line per batch size: the process's CPU seconds per step of `kind` over STEPS_TIMED steps
    after a warm-up (what the step takes on a core of its own: this machine's cores are shared, so the wall time,
    also printed, includes waiting for the core), and busy = CPU / wall."""
    os.sched_setaffinity(0, {core})
    from mpi_ensemble import model

    keras = startup.import_keras(1)
    rng = np.random.default_rng(0)
    x = rng.random((STEPS_TIMED * max(max(images), 1), 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, len(x)).astype(np.int64)
    net = model.build_model(keras, steps_per_execution=1 if kind == "local_spe1" else 16)
    timer = data_parallel_step(keras, net, x, y) if kind == "data_parallel" else \
        {"local": local_step, "local_spe1": local_step, "averaging": averaging_copies}[kind]
    for b in images:
        wall, cpu = timer(keras, net, x[:STEPS_TIMED * b], y[:STEPS_TIMED * b], b)
        print(json.dumps({"kind": kind, "images": b, "seconds": cpu / STEPS_TIMED, "wall_s": wall / STEPS_TIMED,
                          "busy": cpu / wall, "loadavg": loadavg()}), flush=True)


def local_step(keras, net, x, y, batch):
    """A Keras fit epoch over our input pipeline (as training.fit runs it), once to trace, once timed."""
    from mpi_ensemble import training

    net.fit(training.tf_dataset(x, y, batch), epochs=1, verbose=0, shuffle=False)
    wall, cpu = time.perf_counter(), records.cpu_seconds()
    net.fit(training.tf_dataset(x, y, batch), epochs=1, verbose=0, shuffle=False)
    return time.perf_counter() - wall, records.cpu_seconds() - cpu


def averaging_copies(keras, net, x, y, batch):
    """Local SGD's weight averaging on one rank (local_sgd.WeightAveraging over MPI.COMM_SELF): the weights out of
    Keras, flattened, allreduced (a copy here), divided and set back: what an averaging costs beyond the network."""
    from mpi4py import MPI

    from mpi_ensemble import local_sgd

    averaging = local_sgd.WeightAveraging(MPI.COMM_SELF, None, 0, None)
    for _ in range(4):
        averaging.average(net)
    wall, cpu = time.perf_counter(), records.cpu_seconds()
    for _ in range(STEPS_TIMED):
        averaging.average(net)
    return time.perf_counter() - wall, records.cpu_seconds() - cpu


def data_parallel_step(keras, net, x, y):
    """The data-parallel loop's step on one rank (data_parallel.DataParallelEpochs over MPI.COMM_SELF: the Allreduce
    is a copy), its slice of a global batch of 64."""
    from mpi4py import MPI

    from mpi_ensemble import data_parallel

    settings = {"batch_size": cost_model.BATCH, "validation_split": 0.0}
    trainer = data_parallel.DataParallelEpochs(keras, net, MPI.COMM_SELF, x, y, settings, 0)

    def timer(keras, net, x, y, batch):
        for i in range(4):
            trainer.step(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch], cost_model.BATCH)
        wall, cpu = time.perf_counter(), records.cpu_seconds()
        for i in range(STEPS_TIMED):
            trainer.step(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch], cost_model.BATCH)
        return time.perf_counter() - wall, records.cpu_seconds() - cpu

    return timer


def measure_compute(args, out):
    """--repeats fresh processes per kind of --kinds, interleaved, each on core 0 with 1 thread; replaces those
    kinds' rows of OUT/compute.csv."""
    rows = []
    for repeat in range(args.repeats):
        for kind in args.kinds:
            images = IMAGES[kind]
            wait_for_quiet(args)
            cmd = [sys.executable, __file__, "--out", str(out), "--step-worker", kind, "0", *map(str, images)]
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f"step worker {kind} failed:\n{done.stderr[-3000:]}")
            rows += [{**json.loads(line), "repeat": repeat} for line in done.stdout.splitlines()
                     if line.startswith("{")]
            print(f"compute repeat {repeat + 1}/{args.repeats} {kind}: done, load {loadavg()}", flush=True)
    steps = pd.DataFrame(rows)
    if (out / "compute.csv").exists():
        kept = pd.read_csv(out / "compute.csv")
        steps = pd.concat([kept[~kept["kind"].isin(args.kinds)], steps], ignore_index=True)
    steps.to_csv(out / "compute.csv", index=False)
    return steps


# --- Allreduce on the test cluster --------------------------------------------------------------------------------


def calls_for(nbytes, quick):
    if quick:
        return 5
    return 100 if nbytes <= 32768 else 50 if nbytes <= cost_model.MODEL_BYTES else 20 if nbytes <= 2**20 else 10


def idle_cores(seconds=1.0):
    """Cores idle over the next `seconds`, from /proc/stat (idle and iowait jiffies of all CPUs)."""
    def sample():
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)

    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return os.cpu_count() * (idle1 - idle0) / max(1, total1 - total0)


def wait_for_quiet(args):
    """Wait (up to --quiet-wait s) until --quiet-cores cores stay idle for a second: a token bucket releases its
    packets from a timer, and on busy cores that timer's softirq waits its turn, so shaped links run slower than
    their rate when the machine is loaded. Returns the idle cores seen last (recorded with the measurements)."""
    deadline = time.monotonic() + args.quiet_wait
    idle = idle_cores()
    while idle < args.quiet_cores and time.monotonic() < deadline:
        idle = idle_cores(2.0)
    return idle


def probe(cluster, n, sizes, algorithm, args, folder):
    """One srun of benchmarks/allreduce_probe.py over n nodes; its JSON, with the idle cores before it."""
    idle = wait_for_quiet(args)
    out = folder / f"probe-{n}-{algorithm}-{time.monotonic_ns()}.json"
    env = dict(item.split("=", 1) for item in args.mpi_env)
    if algorithm != "auto":
        env["MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM"] = algorithm
    result = run_probe(cluster, n, sizes, [calls_for(m, args.quick) for m in sizes], out, env)
    return {**result, "idle_cores_before": idle}


def run_probe(cluster, n, sizes, calls, out, env=None, timeout=600):
    """benchmarks/allreduce_probe.py as one step of n tasks on n nodes (`srun --mpi=pmi2`, the pip MPICH); its
    JSON. `env` is added to the cluster's environment."""
    cmd = [slurm_cluster().find("srun"), "--mpi=pmi2", "-N", str(n), "-n", str(n), "--mem-per-cpu", "500",
           sys.executable, str(ROOT / "benchmarks" / "allreduce_probe.py"), str(out),
           "--sizes", *map(str, sizes), "--calls", *map(str, calls)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**cluster.env, **(env or {})}, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(Path(out).read_text())


def probe_rows(result, network, algorithm, round_):
    """One row per (size, call) of a probe's JSON: seconds of the slowest rank; bytes sent per call."""
    rows = []
    n = result["ranks"]
    for size in result["sizes"]:
        calls = size["calls"]
        sent = [(tx - barrier) / calls for tx, barrier in zip(size["tx_bytes"], size["barrier_tx_bytes"])]
        for call, seconds in enumerate(size["seconds"]):
            rows.append({"network": network, "ranks": n, "algorithm": algorithm, "bytes": size["bytes"],
                         "round": round_, "call": call, "seconds": seconds,
                         "tx_bytes_per_rank": statistics.mean(sent), "tx_bytes_max_rank": max(sent),
                         "loadavg": result["loadavg_before"], "idle_cores_before": result["idle_cores_before"],
                         "hosts": ",".join(result["hosts"])})
    return rows


def sweep(cluster, args, folder, round_):
    rows = []
    for name in args.networks:
        label, rate = NETWORKS[name]
        if rate:
            cluster.network.shape(rate)
        else:
            cluster.network.unshape()
        for n in RANKS:
            # The forced algorithms say which one MPICH's choice matches; once is enough.
            forced = [] if args.skip_forced or round_ else [(a, FORCED_SIZES) for a in FORCED]
            runs = [("auto", args.sizes)] + forced
            for algorithm, sizes in runs:
                result = probe(cluster, n, sizes, algorithm, args, folder)
                rows += probe_rows(result, name, algorithm, round_)
            rows = with_drops(rows, cluster.network, name, n)
            print(f"round {round_ + 1}: {label} N = {n} done, load {loadavg()}", flush=True)
    cluster.network.unshape()
    return rows


def with_drops(rows, network, name, n):
    """The packets the token buckets dropped so far on this network (tc's counters), on its rows at N = n: drops
    force TCP to resend, and tell an overflowing queue from a slow link."""
    drops = sum(q.get("drops", 0) for k in range(1, network.count + 1) for side in network.qdiscs(k) for q in side)
    return [{**r, "qdisc_drops": drops} if r["network"] == name and r["ranks"] == n else r for r in rows]


def slurm_cluster():
    import slurm_cluster as module

    return module


def measure_network(args, out):
    sc = slurm_cluster()
    reason = sc.unavailable_reason(nodes=True)
    if reason:
        raise SystemExit(f"the network phase needs the test cluster: {reason}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="network-bench-") as tmp:
        cluster = sc.NodesCluster(Path(tmp) / "cluster", nodes=3, cpus=1, memory_mb=4000)
        with sc.running(cluster):
            for round_ in range(args.rounds):
                rows += sweep(cluster, args, Path(tmp), round_)
    calls = pd.DataFrame(rows)
    calls.to_csv(out / "allreduce_calls.csv", index=False)
    return calls


# --- the model ---------------------------------------------------------------------------------------------------


def medians(calls):
    """Median seconds per (network, ranks, algorithm, bytes) over all calls and rounds, with the algorithm MPICH
    picks named for "auto" rows, and the bytes each rank sent per call against the payload."""
    keys = ["network", "ranks", "algorithm", "bytes"]
    table = calls.groupby(keys, sort=False).agg(
        seconds=("seconds", "median"), calls=("seconds", "size"), p10_s=("seconds", lambda s: s.quantile(0.1)),
        p90_s=("seconds", lambda s: s.quantile(0.9)), tx_bytes_per_rank=("tx_bytes_per_rank", "median"),
        tx_bytes_max_rank=("tx_bytes_max_rank", "median"), loadavg=("loadavg", "max"),
        idle_cores=("idle_cores_before", "min"),
        qdisc_drops=("qdisc_drops", "max")).reset_index()
    table["runs"] = [a if a != "auto" else cost_model.mpich_algorithm(n, m)
                     for a, n, m in zip(table["algorithm"], table["ranks"], table["bytes"])]
    table["expected_tx"] = [cost_model.bytes_sent(a, n, m) for a, n, m in
                            zip(table["runs"], table["ranks"], table["bytes"])]
    table["tx_over_payload"] = table["tx_bytes_per_rank"] / table["bytes"]
    return table


def fits_of(table):
    """α, β per measured network, from MPICH's own choice of algorithm (the "auto" rows)."""
    auto = table[table["algorithm"] == "auto"].assign(algorithm=lambda t: t["runs"])
    return cost_model.fit_all(auto), auto


def projected_networks(fits):
    """The fits the projection uses. A shaped rate the machine could not carry (the fit's effective rate under
    CARRIED of it: headers and the wire's overhead take 6 %) is replaced by the 1 Gbit/s fit with β divided by the
    rate ratio, and says so."""
    used = {}
    for name, fit in fits.items():
        label, rate = NETWORKS[name]
        if rate is None:
            continue
        carried = fit["effective_gbit_s"] * 1e9 / rate
        if carried >= CARRIED or "1gbit" not in fits:
            used[label] = {**fit, "source": f"fitted on the {label} links"}
        else:
            base = fits["1gbit"]
            used[label] = {**base, "beta_s_per_byte": base["beta_s_per_byte"] * 1e9 / rate,
                           "effective_gbit_s": base["effective_gbit_s"] * rate / 1e9,
                           "source": (f"1 Gbit/s fit with β scaled by 1/{rate / 1e9:g}: the {label} links carried "
                                      f"only {fit['effective_gbit_s']:.2f} Gbit/s here")}
    return used


ASSUMPTIONS = ["Assumed:", "- no overlap of compute and communication", "- one rank per node, non-blocking network",
               "- no stragglers, no OS noise", "- every rank's step takes the measured time"]


def figure(table, points, used, steps, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpi_ensemble.plots import log_axis  # plain labels (20, 50, 100), as the workflow's figures

    networks = list(dict.fromkeys(table["network"]))
    fig, axes = plt.subplots(1, len(networks), figsize=(6.5 * len(networks), 5.2), sharey=True, squeeze=False)
    colours = dict(zip(dict.fromkeys(table["method"]), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, network in zip(axes[0], networks):
        lines = table[(table["network"] == network) & (table["ranks"] != 3)]
        for method, rows in lines.groupby("method", sort=False):
            rows = rows.sort_values("ranks")
            # A method leaves its regime as N grows and never comes back: the points inside are a prefix.
            inside = int((rows["regime"].fillna("") == "").sum())
            ax.plot(rows["ranks"][:inside], rows["seconds"][:inside], label=method, color=colours[method])
            if inside < len(rows):  # dotted from the last point inside, so that the line stays one line
                ax.plot(rows["ranks"][max(inside - 1, 0):], rows["seconds"][max(inside - 1, 0):], ":",
                        color=colours[method])
        at_three = table[(table["network"] == network) & (table["ranks"] == 3)]
        for method, rows in at_three.groupby("method", sort=False):
            ax.plot(rows["ranks"], rows["seconds"], "o", color=colours[method], markersize=8, fillstyle="none")
        measured = points[points["network"] == network]
        for method, rows in measured.groupby("method", sort=False):
            ax.plot(rows["ranks"], rows["seconds"], "o", color=colours[method], markersize=5)
        ax.set(xlabel="ranks N (one per node; lines at powers of two)")
        log_axis(ax, "x")
        log_axis(ax, "y")
        ax.set_title(f"{network}: α {fmt_s(used[network]['alpha_s'])}, β {1e9 * used[network]['beta_s_per_byte']:.2f}"
                     f" ns/B\n{used[network]['source']}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("seconds per epoch (48,000 images, training steps)")
    axes[0][0].legend(fontsize=8, title="lines: model at powers of two; ○ model at N = 3\n(MPICH folds a pair "
                      "first); ● measured at N = 2, 3\ndotted: no longer the method (fewer than k\nlocal steps "
                      "in 5 epochs, < 1 batch per rank)", title_fontsize=8)
    fixed = cost_model.compute_summary(steps).set_index("kind").loc["data_parallel", "fixed_s"]
    axes[0][-1].text(1.02, 0.5, "\n".join(ASSUMPTIONS + [f"data-parallel pays {1e3 * fixed:.1f} ms per step: a "
                                                          "measured cost\nof this implementation, not of the method"]),
                     transform=axes[0][-1].transAxes, fontsize=8, va="center")
    fig.suptitle("Time per epoch against N: model fitted at N ≤ 3, projected to N = 1,024 (time to an accuracy: "
                 "benchmarks/time_to_accuracy.py, at the N measured)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def model_phase(out):
    steps = pd.read_csv(out / "compute.csv")
    table = medians(pd.read_csv(out / "allreduce_calls.csv"))
    fits, auto = fits_of(table)
    used = projected_networks(fits)
    projection = cost_model.projection(steps, used)
    measured = measured_epochs(steps, auto, used)
    crossing = cost_model.crossovers(projection)
    table.to_csv(out / "allreduce_medians.csv", index=False)
    projection.to_csv(out / "projection.csv", index=False)
    measured.to_csv(out / "measured_epochs.csv", index=False)
    crossing.to_csv(out / "crossovers.csv", index=False)
    (out / "fit.json").write_text(json.dumps({"measured": fits, "projected": used,
                                              "compute": cost_model.compute_summary(steps).to_dict("records")},
                                             indent=2) + "\n")
    figure(projection, measured, used, steps, out / "projection.png")
    text = report(steps, table, fits, used, projection, measured, crossing, auto)
    (out / "tables.txt").write_text(text)
    print(text)


def measured_epochs(steps, auto, used):
    """The measured points for the figure: only the shaped networks the projection draws."""
    label_of = {name: NETWORKS[name][0] for name in NETWORKS}
    rows = auto.assign(network=auto["network"].map(label_of))
    return cost_model.measured_points(steps, rows[rows["network"].isin(used)])


# --- the printed tables -------------------------------------------------------------------------------------------


def report(steps, table, fits, used, projection, measured, crossing, auto):
    parts = [header(), compute_table(steps), allreduce_table(table), fit_table(fits, auto, used),
             projection_table(projection, measured), crossover_table(crossing)]
    return "\n\n".join(parts) + "\n"


def header():
    facts = provenance.host_facts()
    return (f"network benchmark, {datetime.date.today()}: host {facts['host']}, {facts['cpu_model']}, "
            f"{facts['cpu_count']} CPUs, load {loadavg()} at the end; Python {platform.python_version()}")


def compute_table(steps):
    summary = cost_model.compute_summary(steps)
    lines = ["compute per step, one process alone on one core, 1 thread (medians over fresh processes)",
             f"{'kind':<14} {'images':>6} {'ms/step':>8} {'ms/image':>9} {'busy':>5} {'repeats':>7}"]
    for (kind, b), rows in steps.groupby(["kind", "images"], sort=False):
        ms = 1e3 * rows["seconds"].median()
        per_image = f"{ms / b:>9.3f}" if b else f"{'-':>9}"
        lines.append(f"{kind:<14} {b:>6} {ms:>8.2f} {per_image} {rows['busy'].median():>5.2f} {len(rows):>7}")
    for r in summary.itertuples():
        lines.append(f"{r.kind}: fixed {1e3 * r.fixed_s:.2f} ms per step + {1e3 * r.per_image_s:.3f} ms per image "
                     f"(least squares over the batch sizes)")
    return "\n".join(lines)


def allreduce_table(table):
    lines = ["Allreduce, one rank per node: median seconds of the slowest rank; tx = bytes each rank's eth0 sent "
             "per call (mean over ranks), expected = the algorithm's payload per rank",
             f"{'network':<9} {'N':>2} {'algorithm':<25} {'bytes':>8} {'median':>10} {'p10-p90':>21} "
             f"{'payload Gbit/s':>14} {'tx/payload':>10} {'tx/expected':>11} {'load':>5}"]
    for r in table.itertuples():
        algorithm = r.algorithm if r.algorithm != "auto" else f"auto: {r.runs}"
        rate = 8 * r.bytes / r.seconds / 1e9
        expected = r.tx_bytes_per_rank / r.expected_tx if r.expected_tx else float("nan")
        lines.append(f"{r.network:<9} {r.ranks:>2} {algorithm:<25} {r.bytes:>8} {fmt_s(r.seconds):>10} "
                     f"{fmt_s(r.p10_s) + '-' + fmt_s(r.p90_s):>21} {rate:>14.3f} {r.tx_over_payload:>10.2f} "
                     f"{expected:>11.2f} {r.loadavg:>5}")
    return "\n".join(lines)


def fit_table(fits, auto, used):
    lines = ["α–β fit per network (MPICH's own algorithm per size; α from messages ≤ 64 B, β by least squares over "
             "messages ≥ 128 KB; model/measured over those)",
             f"{'network':<9} {'alpha':>9} {'beta ns/B':>10} {'effective Gbit/s':>17} {'model/measured':>22}"]
    checked = cost_model.residuals(auto, fits)
    checked = checked[(checked["bytes"] <= 64) | (checked["bytes"] >= 131072)]
    for name, fit in fits.items():
        ratio = checked[checked["network"] == name]["model_over_measured"]
        lines.append(f"{name:<9} {fmt_s(fit['alpha_s']):>9} {1e9 * fit['beta_s_per_byte']:>10.3f} "
                     f"{fit['effective_gbit_s']:>17.2f} {ratio.min():>10.2f} to {ratio.max():<8.2f}")
    lines.append("per measurement (MPICH's own algorithm): measured / model")
    lines.append(f"{'network':<9} {'N':>2} " + " ".join(f"{m:>14}" for m in (8, 131072, cost_model.MODEL_BYTES,
                                                                                 1048576, 4194304)))
    for (name, n), rows in checked.groupby(["network", "ranks"], sort=False):
        by_size = rows.set_index("bytes")
        cells = [f"{fmt_s(by_size.loc[m, 'seconds'])}/{fmt_s(by_size.loc[m, 'model_s'])}" if m in by_size.index
                 else "" for m in (8, 131072, cost_model.MODEL_BYTES, 1048576, 4194304)]
        lines.append(f"{name:<9} {n:>2} " + " ".join(f"{c:>14}" for c in cells))
    lines.append("projected networks:")
    lines += [f"  {label}: α {fmt_s(f['alpha_s'])}, β {1e9 * f['beta_s_per_byte']:.3f} ns/B; {f['source']}"
              for label, f in used.items()]
    return "\n".join(lines)


def projection_table(projection, measured):
    lines = ["seconds per epoch (48,000 images, training steps only): model fitted at N ≤ 3; "
             "[measured] composed from the measured step and Allreduce times; * no longer the method (fewer than k "
             "local steps in all epochs, ranks without an image, or less than one batch per rank)"]
    shown = [1, 2, 3, 8, 64, 128, 1024]
    lines.append(f"{'network':<10} {'method':<20} " + " ".join(f"{'N=' + str(n):>9}" for n in shown)
                 + f" {'comm at 1024':>12}")
    for (network, method), rows in projection.groupby(["network", "method"], sort=False):
        by_n = rows.set_index("ranks")
        cells = " ".join(f"{by_n.loc[n, 'seconds']:>8.3f}" + ("*" if by_n.loc[n, "regime"] else " ") for n in shown)
        share = by_n.loc[1024, "communication_s"] / by_n.loc[1024, "seconds"]
        lines.append(f"{network:<10} {method:<20} {cells} {100 * share:>11.0f}%")
        got = measured[(measured["network"] == network) & (measured["method"] == method)]
        if len(got):
            by_m = got.set_index("ranks")
            cells = " ".join(f"{by_m.loc[n, 'seconds']:>9.3f}" if n in by_m.index else f"{'':>9}" for n in shown)
            lines.append(f"{'':<10} {'  [measured]':<20} {cells}")
    return "\n".join(lines)


def crossover_table(crossing):
    lines = ["where communication stops paying (model), over the N where the method is still itself: best N; first N "
             "where communication ≥ compute; first N slower than one rank alone ('-': not up to the last valid N)",
             f"{'network':<10} {'method':<20} {'best N':>7} {'best s':>8} {'comm≥compute':>13} {'slower than 1':>14} "
             f"{'valid to N':>10}"]
    for r in crossing.itertuples():
        lines.append(f"{r.network:<10} {r.method:<20} {r.best_n:>7} {r.best_s:>8.3f} {dash(r.comm_ge_compute_n):>13} "
                     f"{dash(r.slower_than_one_rank_n):>14} {r.valid_up_to_n:>10}")
    return "\n".join(lines)


def dash(value):
    return "-" if value is None or value != value else str(int(value))


def fmt_s(seconds):
    return f"{seconds * 1e6:.0f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def loadavg():
    return Path("/proc/loadavg").read_text().split()[0]


# --- real jobs on the shaped cluster ------------------------------------------------------------------------------


# The real jobs: (label, command, period of local SGD); training images and epochs; no validation, so an epoch
# is training steps only, as in the model.
JOBS = [("data-parallel", "train_data_parallel", None), ("local_sgd k=1", "train_local_sgd", 1),
        ("local_sgd k=16", "train_local_sgd", 16), ("local_sgd k=epoch", "train_local_sgd", "epoch")]
JOB_IMAGES, JOB_EPOCHS = 6400, 2


def job_command(command, period, n, arrays, folder):
    """The workflow's training command, n ranks on n nodes, 1 thread each."""
    flags = [f"--{name.replace('_', '-')}={path}" for name, path in arrays.items()]
    if period is not None:
        flags.append(f"--period={period}")
    return [slurm_cluster().find("srun"), "--mpi=pmi2", "-N", str(n), "-n", str(n), "--mem-per-cpu", "2000",
            sys.executable, "-m", "mpi4py", "-m", "mpi_ensemble", command, *flags, "--threads", "1",
            "--job-cores", str(n), "--seed", "0", "--epochs", str(JOB_EPOCHS), "--batch-size", str(cost_model.BATCH),
            "--validation-split", "0", "--out-dir", str(folder)]


def job_row(name, label, period, n, ranks, steps, fit):
    """A finished job (its rank records) against the model: its last epoch (the first carries graph tracing;
    slowest rank) and its mean Allreduce. A rank's Allreduce time includes waiting for the ranks that arrive later;
    the rank that waited least ("fastest rank") is the closest to the collective alone."""
    method = "data_parallel" if period is None else "local_sgd"
    model = cost_model.epoch_time(method, n, steps, fit["alpha_s"], fit["beta_s_per_byte"], k=period,
                                  epochs=JOB_EPOCHS, images=JOB_IMAGES)
    checked = cost_model.check_records(ranks, fit)
    measured = max(r["epoch_seconds"][-1] for r in ranks)
    return {"network": name, "method": label, "ranks": n, "hosts": ",".join(r["host"] for r in ranks),
            "steps_per_epoch": ranks[0]["steps_per_epoch"], "allreduce_calls": int(checked["calls"].max()),
            "allreduce_payload_bytes": checked["payload_bytes"].max(),
            "allreduce_fastest_rank_s": checked["measured_s"].min(),
            "allreduce_slowest_rank_s": checked["measured_s"].max(), "allreduce_model_s": checked["model_s"].max(),
            "epoch_measured_s": measured, "epoch_model_s": model["seconds"],
            "epoch_model_over_measured": model["seconds"] / measured,
            "allreduce_share_of_fit": checked["allreduce_share_of_fit"].max(), "loadavg": loadavg()}


def keep_records(folder, n, kept):
    """The job's rank records, copied to `kept` (the raw measurements of the jobs phase)."""
    kept.mkdir(parents=True, exist_ok=True)
    ranks = []
    for r in range(n):
        text = (folder / f"rank{r}.json").read_text()
        (kept / f"rank{r}.json").write_text(text)
        ranks.append(json.loads(text))
    return ranks


def jobs_phase(args, out):
    """Real jobs (the workflow's commands, JOB_EPOCHS epochs on JOB_IMAGES images, no validation) on the shaped
    cluster at N = --job-ranks, one rank per node, against the model fitted in OUT. At N = 3 the ranks share
    2 cores: those epochs are oversubscribed."""
    from mpi_ensemble import data

    fits, steps = json.loads((out / "fit.json").read_text())["measured"], pd.read_csv(out / "compute.csv")
    sc, rows = slurm_cluster(), []
    with tempfile.TemporaryDirectory(prefix="network-jobs-") as tmp:
        arrays = {name: Path(tmp) / f"{name}.npy" for name in data.ARRAY_NAMES}
        src = ROOT / "data" / "mnist"
        data.preprocess([src / f for f in data.file_names("mnist")], arrays, "mnist", JOB_IMAGES, 500)
        cluster = sc.NodesCluster(Path(tmp) / "cluster", nodes=3, cpus=1, memory_mb=4000)
        with sc.running(cluster):
            for name in args.networks:
                rate = NETWORKS[name][1]
                cluster.network.shape(rate) if rate else cluster.network.unshape()
                for n in args.job_ranks:
                    for label, command, period in JOBS:
                        folder = Path(tmp) / f"{name}-{n}-{command}-{period}"
                        wait_for_quiet(args)
                        env = {**cluster.env, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"}
                        done = subprocess.run(job_command(command, period, n, arrays, folder), capture_output=True,
                                              text=True, env=env, timeout=900)
                        if done.returncode != 0:
                            raise RuntimeError(f"{label} on {name} at N = {n} failed:\n{done.stderr[-3000:]}")
                        kept = out / "jobs" / f"{name}-ranks{n}-{label.replace(' ', '-').replace('=', '')}"
                        rows.append(job_row(name, label, period, n, keep_records(folder, n, kept), steps, fits[name]))
                        print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "jobs.csv", index=False)
    print(table.to_string(index=False))


# (token bucket bytes, segmentation-offload bytes) tried at 1 Gbit/s; the first pair is the one in use.
BUCKETS = [(65536, 16384), (16384, 16384), (65536, 65536), (262144, 16384)]


def calibrate_phase(args, out):
    """Per bucket setting and round: medians of 10 Allreduces of 4 MiB and 30 of one model at N = 2, 1 Gbit/s."""
    sc, rows = slurm_cluster(), []
    with tempfile.TemporaryDirectory(prefix="network-calibrate-") as tmp:
        cluster = sc.NodesCluster(Path(tmp) / "cluster", nodes=2, cpus=1, memory_mb=2000)
        with sc.running(cluster):
            for round_ in range(args.rounds):
                for burst, gso in BUCKETS:
                    cluster.network.shape(1e9, burst=burst, gso=gso)
                    idle = wait_for_quiet(args)
                    result = run_probe(cluster, 2, [cost_model.MODEL_BYTES, 4 * 2**20], [30, 10],
                                       Path(tmp) / f"{burst}-{gso}-{round_}.json")
                    for size in result["sizes"]:
                        rows.append({"burst_bytes": burst, "gso_bytes": gso, "round": round_, "bytes": size["bytes"],
                                     "median_s": statistics.median(size["seconds"]), "min_s": min(size["seconds"]),
                                     "line_rate_s": size["bytes"] * 8 / 1e9 * (1538 / 1448), "idle_cores": idle,
                                     "loadavg": result["loadavg_before"]})
                    cluster.network.unshape()
    table = pd.DataFrame(rows)
    table.to_csv(out / "calibration.csv", index=False)
    print("1 Gbit/s, N = 2: Allreduce against the line rate (payload + TCP/IP/Ethernet headers and wire overhead)")
    print(table.to_string(index=False))


def check_records_phase(folder, network, out):
    """Print a job's rank records against the model of `network` (from OUT's fit.json)."""
    fits = json.loads((out / "fit.json").read_text())["measured"]
    if network not in fits:
        raise SystemExit(f"{out}/fit.json has no fit for {network}; fitted: {', '.join(fits)}")
    ranks = sorted(Path(folder).glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    if not ranks:
        raise SystemExit(f"no rank*.json in {folder}: point --check-records at a job's folder of rank records")
    table = cost_model.check_records([json.loads(p.read_text()) for p in ranks], fits[network])
    print(table.to_string(index=False))
    return table


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    if args.step_worker:
        kind, core, *images = args.step_worker
        return step_worker(kind, int(core), [int(b) for b in images])
    out.mkdir(parents=True, exist_ok=True)
    if args.check_records:
        return check_records_phase(args.check_records, args.network, out)
    if args.phase in ("all", "compute"):
        measure_compute(args, out)
    if args.phase in ("all", "network"):
        measure_network(args, out)
    if args.phase in ("all", "model"):
        model_phase(out)
    if args.phase == "jobs":
        jobs_phase(args, out)
    if args.phase == "calibrate":
        calibrate_phase(args, out)


if __name__ == "__main__":
    main()
