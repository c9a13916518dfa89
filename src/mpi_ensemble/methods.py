"""Every method the workflow runs, declared once: its name, the job that trains it, the jobs that combine what it
trained, what its result is made of, where its files and benchmarks lie, and how the figures and the report show
it. The rules (common.smk), the summary, the figures, the report captions and the audit (for what exists, never
for a formula) all read this module.

A result is one `Run`: a method at a world size N, a seed, and for the sequential baseline its threads, for the
methods that average every k local steps their period. Paths are relative to the results folder's parent, as the
rules write them (`results/...`).
"""

from dataclasses import dataclass

# The job that trains each kind of model, by its benchmark folder; a rule name adds `_ranks{N}` for MPI jobs.
SEQUENTIAL_JOB = "train_sequential"
MEMBERS_JOB = "train_mpi"  # the ensemble's N members, one model per rank (rules train_mpi_ranks{N})
# What a result is made of: its training process's own model, the N ranks' one model, all N members, or member 0.
MADE_OF = ("own", "together", "members", "rank0")


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # legends and report text
    colour: str
    marker: str
    made_of: str  # one of MADE_OF
    train: str  # the training job (benchmark folder)
    combine: tuple = ()  # the jobs after training, in order; each one's benchmark adds to job_seconds
    paper: bool = False  # the paper's rows run at every N; the others at control_ranks
    min_ranks: int = 1  # those that need two members or two ranks start at N = 2
    periodic: bool = False  # one job per local-SGD period (local_sgd_periods)
    saves_model: bool = True  # a model.keras in the result's own folder
    description: str = ""


def together(name, label, colour, marker, description, periodic=False):
    """A method whose N ranks train one model in one MPI job (rules train_{name}_ranks{N}), scored by rank 0."""
    return Method(name, label, colour, marker, "together", f"train_{name}", min_ranks=2, periodic=periodic,
                  description=description)


METHODS = (
    Method("sequential", "sequential (paper)", "black", "D", "own", SEQUENTIAL_JOB, paper=True,
           description="one process, the whole training set; 1 thread and all threads (the paper's setting)"),
    Method("ensemble_majority", "ensemble, majority vote (paper)", "tab:blue", "o", "members", MEMBERS_JOB,
           ("ensemble",), paper=True, saves_model=False,
           description="the N members' majority vote, ties to the lowest class (the paper's method)"),
    Method("ensemble_majority_tiebreak", "ensemble, majority + confidence tie-break", "tab:cyan", "v", "members",
           MEMBERS_JOB, ("ensemble", "vote_variants"), saves_model=False,
           description="the same members; a tie goes to the tied class with the largest summed probability"),
    Method("ensemble_soft", "ensemble, soft vote", "tab:green", "^", "members", MEMBERS_JOB,
           ("ensemble", "vote_variants"), saves_model=False,
           description="the same members; the mean of their softmax outputs"),
    Method("weight_average_by_test", "weights averaged once, by test accuracy (paper's code)", "tab:olive", "P",
           "members", MEMBERS_JOB, ("ensemble", "weight_average"), min_ranks=2,
           description="the members' weights averaged once, each weighted by its test accuracy, as the paper's "
           "code first tried"),
    Method("weight_average_by_validation", "weights averaged once, by validation accuracy", "tab:gray", "p",
           "members", MEMBERS_JOB, ("ensemble", "weight_average"), min_ranks=2,
           description="the members' weights averaged once, each weighted by its last validation accuracy"),
    Method("single_shard", "single shard (rank 0 alone, 1/N of the data)", "tab:red", "X", "rank0", MEMBERS_JOB,
           ("single_shard",), min_ranks=2, saves_model=False,
           description="the control: member 0 alone, one model trained on 1/N of the data by one rank"),
    together("data_parallel", "data-parallel, global batch (allreduce every step)", "tab:purple", "s",
             "synchronous data-parallel training: one model, gradients averaged every step; the global batch is "
             "batch_size, split across the ranks"),
    together("data_parallel_rank_batch", "data-parallel, batch per rank (synchronous SGD)", "tab:orange", ">",
             "synchronous SGD at batch_size images per rank on the ranks' own shards (global batch batch_size·N), "
             "gradients averaged every step: local SGD's comparison"),
    together("weight_average_shared_start", "shared start, weights averaged once at the end", "tab:brown", "*",
             "every rank starts from rank 0's weights, trains on its shard; the weights are averaged once, at the "
             "end"),
    together("local_sgd", "local SGD", "tab:pink", "h",
             "a shared start; the ranks average their weights every `period` local steps (or once per epoch)",
             periodic=True),
    together("post_local_sgd", "post-local SGD (synchronous first epoch)", "navy", "<",
             "synchronous SGD at batch_size per rank for the first epoch, then local SGD with period `period` (Lin "
             "et al., 2020)", periodic=True),
)
BY_NAME = {m.name: m for m in METHODS}
NAMES = tuple(BY_NAME)
# The jobs whose ranks train one model together, by rule family (train_{name}_ranks{N}).
TOGETHER = tuple(m for m in METHODS if m.made_of == "together")

# summary.csv's columns that a training job measures over its whole run. A job resumed from a checkpoint measured
# only the epochs after it, so these cells are empty in its row (flagged by resumed_from_epoch > 0), and the
# relative columns of the rows that would use it as a baseline are empty too.
PARTIAL_WHEN_RESUMED = (
    "fit_seconds_mean", "fit_seconds_max", "train_job_seconds", "job_seconds", "time_decrease_pct", "speedup",
    "efficiency", "job_speedup", "allreduces_per_rank", "allreduce_bytes_per_rank", "allreduce_seconds_max",
    "core_seconds", "cpu_seconds", "images_per_second_per_core", "gflops_per_core",
)


# The seconds (and core-seconds) of training until the delivered model first reached a target validation accuracy:
# one column pair per target of the config, partial as the timings are.
TARGET_PREFIXES = ("seconds_to_", "core_seconds_to_")
# The validation accuracy, per epoch, of the model a method would deliver (training.DELIVERED).
DELIVERED = "delivered_val_accuracy"


def target_columns(targets):
    return [f"{prefix}{target:g}" for target in targets for prefix in TARGET_PREFIXES]


def reached_column(column):
    """For `seconds_to_t`, the summary_stats.csv column counting the seeds behind its mean: those timed whose
    delivered model reached t (a seed that never did has no time to average). None for any other column."""
    prefix = TARGET_PREFIXES[0]
    return f"n_reached_{column[len(prefix):]}" if column.startswith(prefix) else None


def partial_when_resumed(column):
    """Is this summary.csv column one that a resumed job measured only in part?"""
    return column in PARTIAL_WHEN_RESUMED or column.startswith(TARGET_PREFIXES)


def method(name):
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; the methods are {', '.join(NAMES)}") from None


@dataclass(frozen=True)
class Run:
    """One result: a method at N ranks and a seed (threads: the sequential run's; period: local SGD's)."""

    method: str
    ranks: int
    seed: int
    threads: str = None
    period: str = None

    @property
    def declared(self):
        return method(self.method)


def run_of(result):
    """The Run a result record belongs to."""
    threads = str(result["threads"]) if result["method"] == "sequential" else None
    period = result.get("period") if method(result["method"]).periodic else None
    return Run(result["method"], int(result["ranks"]), int(result["seed"]), threads,
               None if period is None else str(period))


def runs(ranks, control_ranks, seeds, baseline_threads, periods):
    """Every result a config asks for: the paper's rows at every N (the sequential run once per thread count),
    the other methods at `control_ranks` from their own minimum N, local SGD once per period."""
    out = []
    for seed in seeds:
        out += [Run("sequential", 1, seed, str(t)) for t in baseline_threads]
        for m in METHODS[1:]:
            sizes = ranks if m.paper else [n for n in control_ranks if n in ranks]
            for n in (n for n in sizes if n >= m.min_ranks):
                out += [Run(m.name, n, seed, period=str(k)) for k in periods] if m.periodic else [Run(m.name, n, seed)]
    return out


# --- where a run's files lie -------------------------------------------------------------------------------------


def run_path(run):
    """What tells a method's runs apart, as folders: threads{t}/seed{s}, [period{k}/]ranks{N}/seed{s}; the
    result's folder below the method's, and its training job's log below the job's."""
    if run.method == "sequential":
        return f"threads{run.threads}/seed{run.seed}"
    period = f"period{run.period}/" if run.declared.periodic else ""
    return f"{period}ranks{run.ranks}/seed{run.seed}"


def folder(run, root="results"):
    """The folder of a run's result.json (and its model, history and rank records where it has them)."""
    return f"{root}/{run.method}/{run_path(run)}"


def result_path(run, root="results"):
    return f"{folder(run, root)}/result.json"


def members_folder(ranks, seed, root="results"):
    """Where the ensemble's N members (train_mpi_ranks{N}) keep their models, records and histories."""
    return f"{root}/models/ranks{ranks}/seed{seed}"


def benchmark_key(run):
    if run.method == "sequential":
        return f"threads{run.threads}_seed{run.seed}"
    period = f"period{run.period}_" if run.declared.periodic else ""
    return f"{period}ranks{run.ranks}_seed{run.seed}"


def benchmark(job, key, root="results"):
    return f"{root}/benchmarks/{job}/{key}.tsv"


def benchmarks(run, root="results"):
    """The benchmarks of the jobs a result waited for, the training job first: what job_seconds adds up."""
    key = benchmark_key(run)
    train_key = f"ranks{run.ranks}_seed{run.seed}" if run.declared.made_of in ("members", "rank0") else key
    return [benchmark(run.declared.train, train_key, root)] + [benchmark(j, key, root) for j in run.declared.combine]


def members(run):
    """The ranks whose processes made a result (their records are its rank_timing)."""
    made_of = run.declared.made_of
    return [0] if made_of in ("own", "rank0") else list(range(run.ranks))


def record_paths(run, root="results"):
    """The rank records of the processes a result was made of; none for the sequential run, whose result is its
    own record."""
    made_of = run.declared.made_of
    if made_of == "own":
        return []
    base = folder(run, root) if made_of == "together" else members_folder(run.ranks, run.seed, root)
    return [f"{base}/rank{r}.json" for r in members(run)]


def model_paths(run, root="results"):
    """The saved models a result rests on: its own model, the one model of N ranks, or the members (a weight
    average's own model last)."""
    m = run.declared
    if m.made_of in ("own", "together"):
        return [f"{folder(run, root)}/model.keras"]
    own = [f"{folder(run, root)}/model.keras"] if m.saves_model else []
    return [f"{members_folder(run.ranks, run.seed, root)}/rank{r}.keras" for r in members(run)] + own


def history_paths(run, root="results"):
    """The history.csv files behind a result's training curve: its model's, or each member's."""
    if run.declared.made_of in ("own", "together"):
        return [f"{folder(run, root)}/history.csv"]
    return [f"{members_folder(run.ranks, run.seed, root)}/rank{r}_history.csv" for r in members(run)]


def curve_label(run):
    """The training-curves figure's label of a run: runs of one label (an ensemble's members, the seeds) are
    averaged."""
    if run.method == "sequential":
        return f"sequential/threads:{run.threads}"
    if run.declared.made_of in ("members", "rank0"):
        return f"ensemble_member/N:{run.ranks}"
    period = f"/period{run.period}" if run.declared.periodic else ""
    return f"{run.method}{period}/N:{run.ranks}"


# --- what the summarize stage makes of them ---------------------------------------------------------------------

# The figures, by the key the figures rule and plots.py know them by: file name under results/figures/.
FIGURES = {
    "fig_sequential": "fig5_sequential.png",
    "fig_scaling": "fig6_scaling.png",
    "fig_speedup": "speedup.png",
    "fig_rank_times": "rank_times.png",
    "fig_methods": "fig_methods.png",
    "fig_voting": "fig_voting.png",
    "fig_training_curves": "training_curves.png",
    "fig_communication": "fig_communication.png",
    "fig_cost": "fig_cost.png",
    "fig_headline": "fig_headline.png",
}
# The report's tables under results/tables/: the summary, the provenance, one page per method.
TABLES = ["summary.html", "provenance.html", *(f"methods/{name}.html" for name in NAMES)]
