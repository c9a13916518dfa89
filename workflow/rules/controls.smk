# Beyond the paper (issue 4): the single-shard control, two other vote rules, synchronous data-parallel
# training, repeat statistics, the paper comparison and the report's tables. Logic in src/mpi_ensemble/
# (controls, data_parallel, stats, comparison, beyond_report, method_plots).

try:
    datasets.require_checksums(DATASET)
except datasets.UnknownChecksumError as err:
    raise WorkflowError(str(err))

# N = 1 would be the ensemble_majority ranks=1 row again (one model on all the data).
SHARD_RANKS = [n for n in RANKS if n > 1]
VOTE_VARIANTS = ["ensemble_soft", "ensemble_majority_tiebreak"]
METHODS = [
    "sequential",
    "ensemble_majority",
    *VOTE_VARIANTS,
    "single_shard",
    "data_parallel",
]
CONTROLS = "python -m mpi_ensemble.controls"


rule vote_variants:
    """Soft vote and majority with confidence tie-break over the same N members, from their saved softmax."""
    input:
        ensemble="results/ensemble/ranks{ranks}/seed{seed}/metrics.json",
        probabilities="results/ensemble/ranks{ranks}/seed{seed}/probabilities.npy",
        test_y=ARRAYS["test_y"],
    output:
        **{v: f"results/ensemble/ranks{{ranks}}/seed{{seed}}/{v}.json" for v in VOTE_VARIANTS},
    log:
        "logs/vote_variants/ranks{ranks}/seed{seed}.log",
    wildcard_constraints:
        ranks=r"\d+",
        seed=r"\d+",
    conda:
        "../../envs/report.yaml"
    params:
        outs=lambda wc, output: " ".join(f"--{v} {output[v]}" for v in VOTE_VARIANTS),
        cmd=CONTROLS,
    shell:
        "{params.cmd} vote-variants --ensemble {input.ensemble} --probabilities {input.probabilities} "
        "--test-y {input.test_y} {params.outs} > {log} 2>&1"


rule single_shard:
    """Rank 0's model alone: one model trained on 1/N of the data in the wall time of one rank."""
    input:
        ensemble="results/ensemble/ranks{ranks}/seed{seed}/metrics.json",
        probabilities="results/ensemble/ranks{ranks}/seed{seed}/probabilities.npy",
        rank0="results/models/ranks{ranks}/seed{seed}/rank0.json",
        test_y=ARRAYS["test_y"],
    output:
        "results/single_shard/ranks{ranks}/seed{seed}/metrics.json",
    log:
        "logs/single_shard/ranks{ranks}/seed{seed}.log",
    wildcard_constraints:
        ranks=r"\d+",
        seed=r"\d+",
    conda:
        "../../envs/report.yaml"
    params:
        cmd=CONTROLS,
    shell:
        "{params.cmd} single-shard --ensemble {input.ensemble} --probabilities {input.probabilities} "
        "--rank0-record {input.rank0} --test-y {input.test_y} --out {output} > {log} 2>&1"


# One rule per world size N, as train_mpi_ranks{N}: the outputs (one record per rank) are listed exactly.
for n in RANKS:

    rule:
        name:
            f"train_data_parallel_ranks{n}"
        input:
            train_x=ARRAYS["train_x"],
            train_y=ARRAYS["train_y"],
            test_x=ARRAYS["test_x"],
            test_y=ARRAYS["test_y"],
        output:
            model=f"results/data_parallel/ranks{n}/seed{{seed}}/model.keras",
            record=f"results/data_parallel/ranks{n}/seed{{seed}}/record.json",
            records=expand(
                "results/data_parallel/ranks{n}/seed{{seed}}/rank{rank}.json",
                n=n,
                rank=range(n),
            ),
        log:
            f"logs/train_data_parallel/ranks{n}/seed{{seed}}.log",
        benchmark:
            f"results/benchmarks/train_data_parallel/ranks{n}_seed{{seed}}.tsv"
        wildcard_constraints:
            seed=r"\d+",
        conda:
            "../../envs/train.yaml"
        # All local cores, as the ensemble's training jobs: no other job disturbs the timing.
        threads: max(CORES, n)
        resources:
            mpi="mpiexec",
            tasks=n,
            # As train_mpi_ranks{N}: under SLURM --cpus-per-task, never N x threads.
            cpus_per_task=threads_per_rank(n),
        params:
            out_dir=lambda wc, output: os.path.dirname(output.model),
            threads=lambda wc, resources: resources.cpus_per_task,
            launch=launch_prefix,
            training=TRAINING_ARGS,
            cmd=CONTROLS.replace("python -m", "python -m mpi4py -m"),
        shell:
            "{params.launch} {params.cmd} data-parallel --threads {params.threads} "
            "--job-cores {threads} --seed {wildcards.seed} --train-x {input.train_x} "
            "--train-y {input.train_y} --test-x {input.test_x} --test-y {input.test_y} "
            "{params.training} --out-dir {params.out_dir} > {log} 2>&1"


# Results of the methods beyond the paper, paired with the benchmark of the job that trained them.
EXTRA_RESULTS = [
    (
        f"results/ensemble/ranks{n}/seed{s}/{v}.json",
        f"results/benchmarks/train_mpi/ranks{n}_seed{s}.tsv",
    )
    for n in RANKS
    for s in SEEDS
    for v in VOTE_VARIANTS
] + [
    (
        f"results/data_parallel/ranks{n}/seed{s}/record.json",
        f"results/benchmarks/train_data_parallel/ranks{n}_seed{s}.tsv",
    )
    for n in RANKS
    for s in SEEDS
]

TIMED_RESULTS = expand(
    "results/single_shard/ranks{ranks}/seed{seed}/metrics.json", ranks=SHARD_RANKS, seed=SEEDS
)


rule beyond_report:
    """Mean ± sd over seeds, differences against the seed spread, the paper comparison, method figures."""
    input:
        summary="results/summary.csv",
        paper="paper/reported_results.csv",
        provenance="results/provenance.json",
    output:
        stats=report(
            "results/summary_stats.csv",
            caption="../report/summary_stats.rst",
            category="Summary",
        ),
        differences=report(
            "results/method_differences.csv",
            caption="../report/differences.rst",
            category="Summary",
        ),
        comparison=report(
            "results/paper_comparison.csv",
            caption="../report/paper_comparison.rst",
            category="Summary",
        ),
        summary_html=report(
            "results/report/summary.html",
            caption="../report/summary_html.rst",
            category="Summary",
        ),
        provenance_html=report(
            "results/report/provenance.html",
            caption="../report/provenance.rst",
            category="Provenance",
        ),
        fig_methods=report(
            "results/figures/fig_methods.png",
            caption="../report/fig_methods.rst",
            category="Figures",
        ),
        fig_voting=report(
            "results/figures/fig_voting.png",
            caption="../report/fig_voting.rst",
            category="Figures",
        ),
    log:
        "logs/beyond_report.log",
    conda:
        "../../envs/report.yaml"
    params:
        cmd=CONTROLS,
    shell:
        "{params.cmd} beyond-report --summary {input.summary} --paper {input.paper} "
        "--provenance {input.provenance} --stats {output.stats} --differences {output.differences} "
        "--comparison {output.comparison} --summary-html {output.summary_html} "
        "--provenance-html {output.provenance_html} --fig-methods {output.fig_methods} "
        "--fig-voting {output.fig_voting} > {log} 2>&1"


rule method_table:
    """Every run of one method (all ranks and seeds) as a table, so the report has a category per method."""
    input:
        summary="results/summary.csv",
    output:
        report(
            "results/report/methods/{method}.html",
            caption="../report/method_table.rst",
            category="Methods",
            subcategory="{method}",
        ),
    log:
        "logs/method_table/{method}.log",
    wildcard_constraints:
        method="|".join(METHODS),
    conda:
        "../../envs/report.yaml"
    params:
        cmd=CONTROLS,
    shell:
        "{params.cmd} method-table --summary {input.summary} --method {wildcards.method} "
        "--out {output} > {log} 2>&1"
