import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version, validate

min_version("9.0")


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

ROOT = Path(workflow.basedir)
# Rules run `python -m mpi_ensemble.cli`: the package lives in src/. Without conda, the interpreter and mpiexec
# that run Snakemake (the project's .venv) serve the jobs too; with --use-conda, each rule's env provides them.
USING_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
VENV_BIN = "" if USING_CONDA else str(Path(sys.executable).parent)
JOB_PATH = os.pathsep.join(p for p in (VENV_BIN, os.getenv("PATH", "")) if p)
shell.prefix(
    f"export PYTHONPATH={ROOT / 'src'}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
    + (f"export PATH={VENV_BIN}:$PATH; " if VENV_BIN else "")
)
sys.path.insert(0, str(ROOT / "src"))

from mpi_ensemble import data, datasets, runtime  # noqa: E402

DATASET = config["dataset"]
FILES = datasets.file_names(DATASET)
RANKS = sorted(set(config["ranks"]))
SEEDS = sorted(set(config["seeds"]))
BASELINE_THREADS = [str(t) for t in config["baseline_threads"]]
# Cores a training job claims so that timings never overlap: --cores (all, by the default profile); inside a
# SLURM job what it was allocated on its node; submitting to SLURM without --cores, this machine's.
CORES = runtime.job_cores(workflow.resource_settings.cores)


def check_subset_sizes():
    """Refuse, before any job, a rank count that leaves a shard with nothing to train on once the
    validation part is cut off."""
    n_train = config["max_train_images"] or 60000
    split = config["validation_split"]
    for n in RANKS:
        shard = n_train // n
        fit_images = data.validation_split_index(shard, split)
        if fit_images < 1:
            raise WorkflowError(
                f"ranks {n} with {n_train} training images leaves shards of {shard} image(s), "
                f"{fit_images} to train on after validation_split {split}; "
                "lower the ranks, raise max_train_images or lower validation_split"
            )


check_subset_sizes()


def warn_oversubscribed():
    """Ranks beyond the cores still run (unbound, one thread each), but their timings mean little: say so."""
    over = [
        n
        for n in RANKS
        if runtime.is_oversubscribed(
            n, config["threads_per_rank"] or runtime.threads_per_rank(CORES, n), CORES
        )
    ]
    if over:
        logger.warning(
            f"Warning: ranks {', '.join(map(str, over))} exceed the {CORES} core(s) Snakemake may use; "
            "those jobs run oversubscribed (marked so in results/summary.csv) and their times do not "
            "measure scaling. Give more --cores or use fewer ranks for honest timings."
        )


warn_oversubscribed()


def data_source_dir():
    """The folder fetch_data copies from: data_dir if set (it must be complete), else the bundled copy, else
    None, meaning download from the mirrors."""
    if config["data_dir"]:
        try:
            data.require_files(config["data_dir"], FILES)
        except data.DataSourceError as err:
            raise WorkflowError(str(err))
        return config["data_dir"]
    bundled = ROOT / "data" / DATASET
    return str(bundled) if not data.missing_files(bundled, FILES) else None


DATA_SOURCE = data_source_dir()


def source_files(wildcards):
    return [] if DATA_SOURCE is None else [os.path.join(DATA_SOURCE, f) for f in FILES]


def threads_per_rank(n):
    return config["threads_per_rank"] or runtime.threads_per_rank(CORES, n)


def launch_prefix(wildcards, resources, threads):
    """`mpiexec -n N` plus binding flags; binding only when the ranks fit on the job's cores."""
    n = int(resources.tasks)
    parts = str(resources.mpi).split()
    if not parts or Path(parts[0]).name not in ("mpiexec", "mpirun"):
        # srun and friends bind by their own options
        try:
            return " ".join(
                runtime.scheduler_launch_command(parts, n, int(resources.cpus_per_task))
            )
        except ValueError as err:
            raise WorkflowError(str(err))
    try:
        launcher = runtime.find_launcher(parts[0], search_path=JOB_PATH)
    except FileNotFoundError as err:
        raise WorkflowError(str(err))
    per_rank = threads_per_rank(n)
    bind = config["bind"] and not runtime.is_oversubscribed(n, per_rank, threads)
    flavour = runtime.launcher_flavour(launcher)
    return " ".join(runtime.launch_command(launcher, flavour, n, per_rank, bind) + parts[1:])


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
    f"--validation-split {config['validation_split']} --precision {config['precision']}"
)


def rank_models(wildcards):
    n = int(wildcards.ranks)
    return {
        "models": expand(
            "results/models/ranks{ranks}/seed{seed}/rank{rank}.keras",
            ranks=n,
            seed=wildcards.seed,
            rank=range(n),
        ),
        "records": expand(
            "results/models/ranks{ranks}/seed{seed}/rank{rank}.json",
            ranks=n,
            seed=wildcards.seed,
            rank=range(n),
        ),
    }


def saved_models():
    """Every saved model and its record. They are results in their own right, so `all` asks for them:
    Snakemake takes a deleted intermediate file for fine, and would neither retrain a deleted model nor
    redo the ensemble and report that used it."""
    members = [
        f"results/models/ranks{n}/seed{s}/rank{r}.{ext}"
        for n in RANKS
        for s in SEEDS
        for r in range(n)
        for ext in ("keras", "json")
    ]
    baselines = expand(
        "results/sequential/threads{threads}/seed{seed}/{file}",
        threads=BASELINE_THREADS,
        seed=SEEDS,
        file=("model.keras", "record.json"),
    )
    return members + baselines
