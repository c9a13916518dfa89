import ast
import json
import os
import re
import sys
from pathlib import Path

import git
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod
from snakemake.sourcecache import HostingProviderFile, LocalGitFile, LocalSourceFile
from snakemake.utils import min_version, validate

min_version("9.0")


# --- configuration: read, checked, refused before any job ------------------------------------------------------


def cli_scalar(value):
    """A number typed in `--config key=[...]`, as a number, so the schema judges its value (e.g. -2 is
    below the minimum), not its type; anything else stays as written."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def coerce_cli_lists(cfg):
    """`--config ranks=[1,2]` arrives as a list of strings (Snakemake parses it as plain YAML text)."""
    for key, value in cfg.items():
        if isinstance(value, list):
            cfg[key] = [cli_scalar(v) if isinstance(v, str) else v for v in value]


coerce_cli_lists(config)
validate(config, schema="../schemas/config.schema.yaml")

# This workflow's own folder (workflow/rules), local or on a git host; not the working directory, which holds
# the results, nor workflow.basedir, which is the user's Snakefile's folder when this workflow is a module.
RULES_DIR = workflow.current_basedir


def own_file(rel, binary=False):
    """A file of this workflow's repository, `rel` to workflow/rules: the file itself in a local copy, else
    Snakemake's cached copy (a module from a git host), or for a binary file our own (git_copy); None where
    there is no such file."""
    if isinstance(RULES_DIR, LocalSourceFile):
        path = os.path.normpath(os.path.join(RULES_DIR.get_path_or_uri(secret_free=True), rel))
        return path if os.path.isfile(path) else None
    try:
        return git_copy(rel) if binary else workflow.source_path(rel)
    except Exception:  # whatever the host or git answers for a missing file
        return None


def git_copy(rel):
    """A binary file of a workflow read from git (github(...), gitlab(...), gitfile(...)), copied once into
    resources/bundled/: Snakemake's source cache reads git files as text, which fails on binary ones.
    """
    source = RULES_DIR.join(rel)
    dest = Path("resources", "bundled", source.path)
    if not dest.exists():
        if isinstance(source, LocalGitFile):
            repo = git.Repo(source.repo_path)
        else:
            source.fetch_if_required()
            repo = source.hosted_repo.repo
        blob = repo.git.show(f"{source.ref}:{source.path}", stdout_as_string=False)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.with_suffix(".part").write_bytes(blob)
        dest.with_suffix(".part").rename(dest)
    return str(dest)


INSTALL_HINT = (
    "Install it into the Python that runs Snakemake: `make venv` in a clone (then run .venv/bin/snakemake), "
    "or `pip install -r envs/requirements.txt` plus the workflow itself, its folder or git URL (README.md, "
    '"Deploy in your own project").'
)
try:
    from mpi_ensemble import __version__, data, runtime
except ImportError as err:
    raise WorkflowError(
        f"The package mpi_ensemble is not importable by {sys.executable}: {err}. {INSTALL_HINT}"
    )
INIT = Path(own_file("../../src/mpi_ensemble/__init__.py")).read_text()
VERSION = re.search(r'__version__ = "(.+)"', INIT)[1]
if __version__ != VERSION:
    raise WorkflowError(
        f"mpi_ensemble {__version__} is installed, this workflow is {VERSION}. {INSTALL_HINT}"
    )


def refuse(check, *args, **kwargs):
    """Run one of the package's checks; its error becomes Snakemake's, before any job starts."""
    try:
        return check(*args, **kwargs)
    except (ValueError, FileNotFoundError) as err:
        raise WorkflowError(str(err))


DATASET = config["dataset"]
refuse(data.require_checksums, DATASET)
FILES = data.file_names(DATASET)
RANKS = sorted(set(config["ranks"]))
SEEDS = sorted(set(config["seeds"]))
BASELINE_THREADS = [str(t) for t in config["baseline_threads"]]
# Cores a training job claims so that timings never overlap: --cores (all, by the default profile); inside a
# SLURM job what it was allocated on its node; submitting to SLURM without --cores, this machine's.
CORES = runtime.job_cores(workflow.resource_settings.cores)
# The methods beyond the paper run at the world sizes that fit the cores (their timings mean something there)
# unless control_ranks is "all" (every N) or "none" (the paper's rows alone).
CONTROL_RANKS = {
    "all": RANKS,
    "cores": [n for n in RANKS if n <= CORES],
    "none": [],
}[config["control_ranks"]]
# Those that need two members or ranks: one-shot averages, the single-shard control, and the methods whose ranks
# talk while they train (data-parallel at N = 1 would be the sequential run with a hand-written loop).
SHARD_RANKS = [n for n in CONTROL_RANKS if n > 1]
# Local SGD's averaging periods (local steps between two averagings, or "epoch"), run where the shard controls run.
PERIODS = [str(k) for k in config["local_sgd_periods"]]
refuse(
    data.check_shards,
    RANKS,
    data.train_count(DATASET, config["max_train_images"]),
    config["validation_split"],
)
# Where fetch_data copies from: data_dir, else the copy bundled with the workflow, else (None) the mirrors.
BUNDLED = [own_file(f"../../data/{DATASET}/{name}", binary=True) for name in FILES]
if config["data_dir"] or all(BUNDLED):
    DATA_SOURCE = refuse(
        data.data_source, config["data_dir"], os.path.dirname(BUNDLED[0] or "."), FILES
    )
else:
    DATA_SOURCE = None
PAPER = own_file("../../paper/reported_results.csv")


def threads_per_rank(n):
    return config["threads_per_rank"] or runtime.threads_per_rank(CORES, n)


OVERSUBSCRIBED = runtime.oversubscribed_ranks(RANKS, threads_per_rank, CORES)
if OVERSUBSCRIBED:
    logger.warning(
        f"Warning: ranks {', '.join(map(str, OVERSUBSCRIBED))} exceed the {CORES} core(s) Snakemake may use; "
        "those jobs run oversubscribed (marked so in results/summary.csv) and their times do not "
        "measure scaling. Give more --cores or use fewer ranks for honest timings."
    )


# --- how jobs run: the installed package, the launcher of MPI jobs --------------------------------------------


def package_source():
    """pip's arguments for this workflow's package, from where Snakemake read the workflow: the local copy
    (editable), or the git host's tag, branch or commit."""
    if isinstance(RULES_DIR, LocalSourceFile):
        return f"-e {Path(RULES_DIR.get_path_or_uri(secret_free=True)).parents[1]}"
    if isinstance(RULES_DIR, HostingProviderFile):
        return f"git+https://{RULES_DIR.host}/{RULES_DIR.repo}@{RULES_DIR.ref}"
    raise WorkflowError(
        f"--sdm conda: cannot tell pip where the package of {RULES_DIR} is; use a local copy"
    )


# Without conda, the interpreter and mpiexec of the environment that runs Snakemake (the project's .venv, where
# `make venv` installed the package) serve the jobs too. With --sdm conda each rule's env provides them: its
# post-deploy script installs the package (from MPI_ENSEMBLE_SOURCE), and the launcher is found when the job
# runs, on the PATH conda gives it, the MPI being the one envs/train.yaml installs.
USING_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
if USING_CONDA:
    os.environ.update(MPI_ENSEMBLE_SOURCE=package_source())  # read by the post-deploy scripts
    TRAIN_ENV = yaml.safe_load(Path(own_file("../../envs/train.yaml")).read_text())
    LAUNCHER_AT = {"flavour": refuse(runtime.env_file_mpi, TRAIN_ENV)}
else:
    VENV_BIN = str(Path(sys.executable).parent)
    LAUNCHER_AT = {
        "search_path": os.pathsep.join(p for p in (VENV_BIN, os.getenv("PATH", "")) if p)
    }
    shell.prefix(f"export PATH={VENV_BIN}:$PATH; ")


def mpi_setting(key, fallback):
    """`mpi_launcher` or `ranks_per_node` and where it came from: the config, unless null there; else the
    default resource of that name, where the SLURM profile sets both (a --configfile of one's own, unlike a
    profile's configfile, cannot drop it); else `fallback`."""
    if config[key] is not None:
        return config[key], "config"
    for arg in getattr(workflow.resource_settings.default_resources, "args", None) or []:
        name, _, value = arg.partition("=")
        if name == key:
            return refuse(ast.literal_eval, value), "the profile's default-resources"
    return fallback, "default"


MPI_LAUNCHER, LAUNCHER_FROM = mpi_setting("mpi_launcher", "mpiexec")
RANKS_PER_NODE, PLACEMENT_FROM = mpi_setting("ranks_per_node", 0)
logger.info(
    f"MPI jobs: launcher `{MPI_LAUNCHER}` ({LAUNCHER_FROM}), "
    f"ranks_per_node {RANKS_PER_NODE} ({PLACEMENT_FROM})"
)


def mpi_resources(n):
    """What every N-rank job asks of the executor: N tasks of k CPUs each (never N x threads), with the
    launcher and placement that hold for every MPI rule (mpi_setting)."""
    return {
        "mpi": runtime.rank_launcher(MPI_LAUNCHER, n),
        "tasks": n,
        "cpus_per_task": threads_per_rank(n),
        **refuse(runtime.placement, n, RANKS_PER_NODE),
    }


def launch_prefix(wildcards, resources, threads):
    """`mpiexec -n N` with binding flags (binding only when the ranks fit on the job's cores), or the scheduler's
    launcher named by the rule's `mpi` resource."""
    n, per_rank = int(resources.tasks), int(resources.cpus_per_task)
    bind = config["bind"] and not runtime.is_oversubscribed(n, per_rank, threads)
    return " ".join(refuse(runtime.launch_prefix, resources.mpi, n, per_rank, bind, **LAUNCHER_AT))


# --- inputs and the training settings every trainer gets -------------------------------------------------------


def data_source_files(wildcards):
    return [] if DATA_SOURCE is None else [os.path.join(DATA_SOURCE, f) for f in FILES]


ARRAYS = {name: f"results/data/{DATASET}/{name}.npy" for name in data.ARRAY_NAMES}


def subset_args():
    """Flags for the smoke-run subsets; none means the whole dataset."""
    flags = {
        "--max-train-images": config["max_train_images"],
        "--max-test-images": config["max_test_images"],
    }
    return " ".join(f"{flag} {value}" for flag, value in flags.items() if value)


TRAINING_ARGS = (
    f"--epochs {config['epochs']} --batch-size {config['batch_size']} "
    f"--validation-split {config['validation_split']} --precision {config['precision']} "
    f"--cpu-tuning {config['cpu_tuning']}"
)


def checkpoint_dir(wildcards, output):
    """Where a training job keeps its per-epoch checkpoints: results/checkpoints/ + its output folder below
    results/. Outside the job's outputs, which Snakemake deletes when the job fails; the job deletes them itself
    once it succeeded (docs/faults.md)."""
    folder = Path(os.path.dirname(output[0]))
    return str(Path("results", "checkpoints", *folder.parts[1:]))


def mpi_shell(command, *extra):
    """The shell command of an MPI training rule: the MPICH segments that killed ranks left are removed, then the
    launcher starts the ranks of `command` with the training settings and `extra` flags (Snakemake fills the
    braces in)."""
    flags = [
        "--threads {resources.cpus_per_task} --job-cores {threads} --seed {wildcards.seed}",
        "--train-x {input.train_x} --train-y {input.train_y} {params.training}",
        "--out-dir {params.out_dir} --checkpoint-dir {params.checkpoints}",
        *extra,
    ]
    return (
        "{{ python -m mpi_ensemble clean_shm && {params.launch} python -m mpi4py -m mpi_ensemble "
        + command
        + " "
        + " ".join(flags)
        + "; }} > {log} 2>&1"
    )


# The test set, for the jobs whose rank 0 scores the model its ranks trained together.
SCORED = "--test-x {input.test_x} --test-y {input.test_y}"


def shared_model_outputs(folder, n):
    """What a job whose N ranks train one model writes: the model, its result and history (rank 0's), and every
    rank's record."""
    job = f"{folder}/ranks{n}/seed{{seed}}"
    return {
        "model": f"{job}/model.keras",
        "result": f"{job}/result.json",
        "history": f"{job}/history.csv",
        "records": [f"{job}/rank{r}.json" for r in range(n)],
    }


def rank_files(wildcards):
    """The saved members of one ensemble job and their rank records."""
    members = range(int(wildcards.ranks))
    folder = f"results/models/ranks{wildcards.ranks}/seed{wildcards.seed}"
    return {
        "models": [f"{folder}/rank{r}.keras" for r in members],
        "records": [f"{folder}/rank{r}.json" for r in members],
    }


# --- what the run produces --------------------------------------------------------------------------------------

VOTE_VARIANTS = ["ensemble_soft", "ensemble_majority_tiebreak"]
WEIGHT_AVERAGES = ["weight_average_by_test", "weight_average_by_validation"]
METHODS = [
    "sequential",
    "ensemble_majority",
    *VOTE_VARIANTS,
    *WEIGHT_AVERAGES,
    "single_shard",
    "data_parallel",
    "weight_average_shared_start",
    "local_sgd",
]


def method_results():
    """Every result with the benchmarks of the jobs on its path, the training job first: what `job_seconds`
    adds up (training plus the vote or the evaluation that produced the result)."""
    out = []
    for s in SEEDS:
        for t in BASELINE_THREADS:
            out.append(
                (
                    f"results/sequential/threads{t}/seed{s}/result.json",
                    [f"results/benchmarks/train_sequential/threads{t}_seed{s}.tsv"],
                )
            )
        for n in RANKS:
            out += ensemble_results(n, s)
    return out + [trained_together(*run) for run in together_runs()]


def ensemble_results(n, s):
    """The results made of one ensemble job's members: the paper's vote, and at the control world sizes the
    other vote rules, and with more than one member the one-shot weight averages and the single-shard control.
    """
    bench = lambda job: f"results/benchmarks/{job}/ranks{n}_seed{s}.tsv"
    train, vote = bench("train_mpi"), bench("ensemble")
    out = [(f"results/ensemble_majority/ranks{n}/seed{s}/result.json", [train, vote])]
    if n not in CONTROL_RANKS:
        return out
    derived = [(v, bench("vote_variants")) for v in VOTE_VARIANTS]
    if n in SHARD_RANKS:  # at N = 1 each would be the one member again
        derived += [(w, bench("weight_average")) for w in WEIGHT_AVERAGES]
        derived.append(("single_shard", bench("single_shard")))
    return out + [
        (f"results/{method}/ranks{n}/seed{s}/result.json", [train, vote, own])
        for method, own in derived
    ]


def trained_together(method, n, s, period=None):
    """The result of a job whose N ranks train one model, with its training job's benchmark."""
    job = f"train_{method}/period{period}_" if period else f"train_{method}/"
    return (
        f"{together_folder(method, n, s, period)}/result.json",
        [f"results/benchmarks/{job}ranks{n}_seed{s}.tsv"],
    )


def together_folder(method, n, s, period=None):
    kind = f"{method}/period{period}" if period else method
    return f"results/{kind}/ranks{n}/seed{s}"


def together_runs():
    """(method, N, seed, period) of every job whose N ranks train one model."""
    runs = [("data_parallel", n, s, None) for s in SEEDS for n in SHARD_RANKS]
    runs += [("weight_average_shared_start", n, s, None) for s in SEEDS for n in SHARD_RANKS]
    return runs + [("local_sgd", n, s, k) for s in SEEDS for n in SHARD_RANKS for k in PERIODS]


RESULTS = method_results()


def saved_models():
    """Every saved model and its record. They are results in their own right, so `all` asks for them:
    Snakemake takes a deleted intermediate file for fine, and would neither retrain a deleted model nor
    redo the ensemble and summary that used it."""
    members = [
        f"results/models/ranks{n}/seed{s}/rank{r}.{ext}"
        for n in RANKS
        for s in SEEDS
        for r in range(n)
        for ext in ("keras", "json")
    ]
    baselines = expand(
        "results/sequential/threads{threads}/seed{seed}/model.keras",
        threads=BASELINE_THREADS,
        seed=SEEDS,
    )
    return members + baselines


def histories():
    """(label, history.csv) of every trained model, for the training-curves figure; an ensemble's members (and
    every label's seeds) share a label and are averaged."""
    out = []
    for s in SEEDS:
        out += [
            (f"sequential/threads:{t}", f"results/sequential/threads{t}/seed{s}/history.csv")
            for t in BASELINE_THREADS
        ]
        out += [
            (f"ensemble_member/N:{n}", f"results/models/ranks{n}/seed{s}/rank{r}_history.csv")
            for n in RANKS
            for r in range(n)
        ]
    for method, n, s, period in together_runs():
        label = f"{method}/period{period}/N:{n}" if period else f"{method}/N:{n}"
        out.append((label, f"{together_folder(method, n, s, period)}/history.csv"))
    return out


HISTORIES = histories()
