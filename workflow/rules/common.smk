import dataclasses
import json
import os
import re
import shlex
import sys
from pathlib import Path

import git
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod
from snakemake.sourcecache import HostingProviderFile, LocalGitFile, LocalSourceFile
from snakemake.utils import min_version, validate

# get_path_or_uri(secret_free=...) needs 9.13.5, a git module's hosted_repo and fetch_if_required 9.14.8.
min_version("9.14.8")


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

INSTALL_HINT = (
    "Install it into the Python that runs Snakemake: `make venv` in a clone (then run .venv/bin/snakemake), "
    "or `pip install -r envs/requirements.txt` plus the workflow itself, its folder or git URL "
    "(docs/deploy.md)."
)
try:
    from mpi_ensemble import __version__, data, methods, runtime
except ImportError as err:
    raise WorkflowError(
        f"The package mpi_ensemble is not importable by {sys.executable}: {err}. {INSTALL_HINT}"
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
# Local SGD's averaging periods (local steps between two averagings, or "epoch").
PERIODS = [str(k) for k in config["local_sgd_periods"]]
refuse(
    data.check_shards,
    RANKS,
    data.train_count(DATASET, config["max_train_images"]),
    config["validation_split"],
)


def threads_per_rank(n):
    return config["threads_per_rank"] or runtime.threads_per_rank(CORES, n)


OVERSUBSCRIBED = runtime.oversubscribed_ranks(RANKS, threads_per_rank, CORES)
if OVERSUBSCRIBED:
    logger.warning(
        f"Warning: ranks {', '.join(map(str, OVERSUBSCRIBED))} exceed the {CORES} core(s) Snakemake may use; "
        "those jobs run oversubscribed (marked so in results/summary.csv) and their times do not "
        "measure scaling. Give more --cores or use fewer ranks for honest timings."
    )


# --- this workflow's own files: a local copy, or a git repository read as a module ----------------------------

# This workflow's own folder (workflow/rules), local or in git; not the working directory, which holds the
# results, nor workflow.basedir, which is the user's Snakefile's folder when this workflow is a module.
RULES_DIR = workflow.current_basedir
IN_GIT = isinstance(RULES_DIR, (LocalGitFile, HostingProviderFile))


def git_blob(rel):
    """(repository, ref, path in it) of a file of this workflow read from git, or None where that commit has no
    such file."""
    source = RULES_DIR.join(rel)
    if isinstance(source, LocalGitFile):
        repo = git.Repo(source.repo_path)
    else:
        source.fetch_if_required()
        repo = source.hosted_repo.repo
    try:
        repo.git.cat_file("-e", f"{source.ref}:{source.path}")
    except git.GitCommandError:  # exit status 1: no such file at that commit
        return None
    return repo, source.ref, source.path


# Files of a workflow read from git that rule unpack_bundled copies under resources/bundled/, so that no job
# reads Snakemake's per-run source cache: {output path: (git folder, ref, path)}.
GIT_FILES = {}


def in_workdir(path):
    """`path` relative to the working directory where it lies inside it: the inputs and params of the jobs that
    read it stay the same when the project folder is moved or copied, so nothing reruns for that."""
    rel = os.path.relpath(path)
    return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def own_file(rel):
    """A file of this workflow's repository, `rel` to workflow/rules: the file itself in a local copy; from git,
    its path under resources/bundled/ (rule unpack_bundled). None where there is no such file."""
    if not IN_GIT:
        path = os.path.normpath(os.path.join(RULES_DIR.get_path_or_uri(secret_free=True), rel))
        return in_workdir(path) if os.path.isfile(path) else None
    found = git_blob(rel)
    if found is None:
        return None
    repo, ref, path = found
    GIT_FILES[f"resources/bundled/{path}"] = (repo.git_dir, ref, path)
    return f"resources/bundled/{path}"


def own_text(rel):
    """The text of a file of this workflow's repository, read where it is (nothing is written)."""
    if not IN_GIT:
        return Path(own_file(rel)).read_text()
    repo, ref, path = git_blob(rel)
    return repo.git.show(f"{ref}:{path}")


VERSION = re.search(r'__version__ = "(.+)"', own_text("../../src/mpi_ensemble/__init__.py"))[1]
if __version__ != VERSION:
    raise WorkflowError(
        f"mpi_ensemble {__version__} is installed, this workflow is {VERSION}. {INSTALL_HINT}"
    )
BUNDLED = [own_file(f"../../data/{DATASET}/{name}") for name in FILES]
# Where fetch_data copies from: data_dir, else the copy bundled with the workflow, else (None) the mirrors.
DATA_SOURCE = refuse(data.data_source, config["data_dir"], BUNDLED, FILES)
PAPER = own_file("../../paper/reported_results.csv")


# --- how jobs run: the interpreter, the launcher of MPI jobs --------------------------------------------------

# Without conda, the interpreter and mpiexec of the environment that runs Snakemake (the project's .venv, where
# `make venv` installed the package) serve the jobs, named by their full paths. With --sdm conda each rule's env
# provides them: its post-deploy script installs the package (from MPI_ENSEMBLE_SOURCE), and the launcher is
# found when the job runs, on the PATH conda gives it, the MPI being the one envs/train.yaml installs.
USING_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method


def package_source():
    """pip's arguments for this workflow's package, from where Snakemake read the workflow: the local copy, or
    the git host's tag, branch or commit."""
    if isinstance(RULES_DIR, LocalSourceFile):
        return str(Path(RULES_DIR.get_path_or_uri(secret_free=True)).parents[1])
    if isinstance(RULES_DIR, HostingProviderFile):
        return f"git+https://{RULES_DIR.host}/{RULES_DIR.repo}@{RULES_DIR.ref}"
    raise WorkflowError(
        f"--sdm conda: cannot tell pip where the package of {RULES_DIR} is; use a local copy"
    )


if USING_CONDA:
    os.environ.update(MPI_ENSEMBLE_SOURCE=package_source())  # read by the post-deploy scripts
    PYTHON = "python"
    LAUNCHER_AT = {"flavour": "mpich"}  # envs/train.yaml installs MPICH (tests/test_deploy.py)
else:
    PYTHON = shlex.quote(sys.executable)
    VENV_BIN = str(Path(sys.executable).parent)
    LAUNCHER_AT = {
        "search_path": os.pathsep.join(p for p in (VENV_BIN, os.getenv("PATH", "")) if p)
    }
# The workflow's command line, `python -m mpi_ensemble RULE ...`.
CLI = f"{PYTHON} -m mpi_ensemble"
RANKS_PER_NODE = config["ranks_per_node"]
LAUNCHER_NOTED = []


def mpi_launcher():
    """The launcher of every MPI job, chosen from the executor in use when the jobs are planned (the config's
    mpi_launcher wins); said once, and loudly where it is not srun under SLURM."""
    executor = workflow.executor_plugin.name if workflow.executor_plugin else None
    if workflow.remote_exec and os.environ.get("SLURM_JOB_ID"):
        # The run of one job inside the allocation the SLURM executor got it (under the slurm-jobstep executor
        # Snakemake runs it once more, with the local one); its command is what starts the ranks.
        executor = "slurm-jobstep"
    launcher, why, warning = runtime.choose_launcher(config["mpi_launcher"], executor)
    if not LAUNCHER_NOTED:
        LAUNCHER_NOTED.append(launcher)
        logger.info(f"MPI jobs: launcher `{launcher}` ({why}), ranks_per_node {RANKS_PER_NODE}")
        if executor == "dryrun" and not config["mpi_launcher"]:
            logger.info(
                f"A dry run plans with the local launcher; the SLURM executor uses `{runtime.SLURM_LAUNCHER}`."
            )
        if warning:
            logger.warning(f"WARNING: {warning}")
    return launcher


def mpi_resources(n):
    """What every N-rank job asks of the executor: N tasks of k CPUs each (never N x threads), placed as
    ranks_per_node says, and the launcher as the `mpi` resource (empty for a 1-rank job under srun, which runs
    as an MPI singleton)."""
    return {
        "mpi": lambda wildcards: runtime.rank_launcher(mpi_launcher(), n),
        "cpus_per_task": threads_per_rank(n),
        **refuse(runtime.placement, n, RANKS_PER_NODE),
    }


def launch_prefix(n):
    """`mpiexec -n N` with binding flags (binding only when the ranks fit on the job's cores), or the scheduler's
    launcher, for an N-rank job."""

    def prefix(wildcards, resources, threads):
        per_rank = int(resources.cpus_per_task)
        bind = config["bind"] and not runtime.is_oversubscribed(n, per_rank, threads)
        return " ".join(
            refuse(runtime.launch_prefix, resources.mpi, n, per_rank, bind, **LAUNCHER_AT)
        )

    return prefix


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
    f"--learning-rate-scaling {config['learning_rate_scaling']} --cpu-tuning {config['cpu_tuning']}"
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
        f"{{{{ {CLI} clean_shm && {{params.launch}} {PYTHON} -m mpi4py -m mpi_ensemble "
        + command
        + " "
        + " ".join(flags)
        + "; }} > {log} 2>&1"
    )


def together_flags(method):
    """The flags of a job whose N ranks train one model: the test set rank 0 scores it on, and local SGD's period.
    (A function per rule: a rule body defined in a loop must not read the loop's variables, which change.)
    """

    def flags(wildcards, input):
        period = f" --period {wildcards.period}" if method.periodic else ""
        return f"--test-x {input.test_x} --test-y {input.test_y}{period}"

    return flags


# --- what the run produces: every result of the config, by the method declaration ----------------------------

RUNS = methods.runs(RANKS, CONTROL_RANKS, SEEDS, BASELINE_THREADS, PERIODS)
# The declaration as the report captions read it.
METHOD_FACTS = [dataclasses.asdict(m) for m in methods.METHODS]
# The world sizes of the jobs whose ranks train one model together, and of the combine rules.
TOGETHER_RANKS = sorted({r.ranks for r in RUNS if r.declared.made_of == "together"})


def result_files():
    return [methods.result_path(r) for r in RUNS]


def benchmark_files():
    return sorted({b for r in RUNS for b in methods.benchmarks(r)})


def saved_models():
    """Every saved model and rank record. They are results in their own right, so `all` asks for them:
    Snakemake takes a deleted intermediate file for fine, and would neither retrain a deleted model nor
    redo the ensemble and summary that used it."""
    files = {p for r in RUNS for p in methods.model_paths(r) + methods.record_paths(r)}
    return sorted(files)


def histories():
    """(label, history.csv) of every trained model, for the training-curves figure; the files of one label (an
    ensemble's members, the seeds) are averaged."""
    pairs = {(methods.curve_label(r), p) for r in RUNS for p in methods.history_paths(r)}
    return sorted(pairs)


def combine_runs(job):
    """The (ranks, seed) pairs at which a combine job runs."""
    return sorted({(r.ranks, r.seed) for r in RUNS if job in r.declared.combine})


def rank_files(wildcards):
    """The saved members of one ensemble job and their rank records."""
    folder = methods.members_folder(wildcards.ranks, wildcards.seed)
    members = range(int(wildcards.ranks))
    return {
        "models": [f"{folder}/rank{r}.keras" for r in members],
        "records": [f"{folder}/rank{r}.json" for r in members],
    }


def wildcard_run(name, ranks="{ranks}"):
    """A run of method `name` with Snakemake's wildcards for what the rule leaves open."""
    return methods.Run(name, ranks, "{seed}", threads="{threads}", period="{period}")


def pattern(name, ranks="{ranks}"):
    """A method's result folder with Snakemake's wildcards in it, from the method declaration."""
    return methods.folder(wildcard_run(name, ranks))


def log_pattern(job, name, ranks="{ranks}"):
    return f"logs/{job}/{methods.run_path(wildcard_run(name, ranks))}.log"


def benchmark_pattern(job, name, ranks="{ranks}"):
    return methods.benchmark(job, methods.benchmark_key(wildcard_run(name, ranks)))
