rule summarize:
    """Every result as a row of summary.csv (job wall times from the benchmarks), the statistics over seeds, the
    differences against the seed spread, the paper comparison, per-rank times and provenance."""
    input:
        results=[result for result, _ in RESULTS],
        benchmarks=sorted({bench for _, benches in RESULTS for bench in benches}),
        paper=PAPER,
    output:
        summary=report("results/summary.csv", caption="../report/summary.rst", category="Summary"),
        stats=report(
            "results/summary_stats.csv", caption="../report/summary_stats.rst", category="Summary"
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
        rank_times="results/rank_times.csv",
        provenance="results/provenance.json",
    log:
        "logs/summarize.log",
    conda:
        "../../envs/summarize.yaml"
    params:
        results=" ".join(result for result, _ in RESULTS),
        benchmarks=" ".join(",".join(benches) for _, benches in RESULTS),
        cores=CORES,
    shell:
        "python -m mpi_ensemble summarize --results {params.results} --benchmarks {params.benchmarks} "
        "--paper {input.paper} --cores {params.cores} --summary {output.summary} "
        "--stats {output.stats} --differences {output.differences} --comparison {output.comparison} "
        "--rank-times {output.rank_times} --provenance {output.provenance} > {log} 2>&1"


rule figures:
    """The paper's figures with its values beside ours, the speed-up, per-rank times, the methods and the
    training curves."""
    input:
        stats="results/summary_stats.csv",
        rank_times="results/rank_times.csv",
        paper=PAPER,
        histories=[path for _, path in HISTORIES],
    output:
        fig_sequential=report(
            "results/figures/fig5_sequential.png", caption="../report/fig5.rst", category="Figures"
        ),
        fig_scaling=report(
            "results/figures/fig6_scaling.png", caption="../report/fig6.rst", category="Figures"
        ),
        fig_speedup=report(
            "results/figures/speedup.png", caption="../report/speedup.rst", category="Figures"
        ),
        fig_rank_times=report(
            "results/figures/rank_times.png",
            caption="../report/rank_times.rst",
            category="Figures",
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
        fig_training_curves=report(
            "results/figures/training_curves.png",
            caption="../report/training_curves.rst",
            category="Figures",
        ),
        fig_communication=report(
            "results/figures/fig_communication.png",
            caption="../report/fig_communication.rst",
            category="Figures",
        ),
        fig_cost=report(
            "results/figures/fig_cost.png", caption="../report/fig_cost.rst", category="Figures"
        ),
    log:
        "logs/figures.log",
    conda:
        "../../envs/summarize.yaml"
    params:
        histories=" ".join(f"{label}={path}" for label, path in HISTORIES),
        networks=json.dumps(config["networks"]),
    shell:
        "python -m mpi_ensemble figures --stats {input.stats} --rank-times {input.rank_times} "
        "--paper {input.paper} --fig-sequential {output.fig_sequential} "
        "--fig-scaling {output.fig_scaling} --fig-speedup {output.fig_speedup} "
        "--fig-rank-times {output.fig_rank_times} --fig-methods {output.fig_methods} "
        "--fig-voting {output.fig_voting} --fig-training-curves {output.fig_training_curves} "
        "--fig-communication {output.fig_communication} --fig-cost {output.fig_cost} "
        "--histories {params.histories} --networks {params.networks:q} > {log} 2>&1"


rule tables:
    """The summary, the provenance and every method's runs (a report subcategory each) as HTML pages for the
    Snakemake report."""
    input:
        summary="results/summary.csv",
        stats="results/summary_stats.csv",
        differences="results/method_differences.csv",
        comparison="results/paper_comparison.csv",
        provenance="results/provenance.json",
    output:
        summary_html=report(
            "results/tables/summary.html", caption="../report/summary_html.rst", category="Summary"
        ),
        provenance_html=report(
            "results/tables/provenance.html",
            caption="../report/provenance.rst",
            category="Provenance",
        ),
        methods=[
            report(
                f"results/tables/methods/{method}.html",
                caption="../report/method_table.rst",
                category="Methods",
                subcategory=method,
            )
            for method in METHODS
        ],
    log:
        "logs/tables.log",
    conda:
        "../../envs/summarize.yaml"
    params:
        methods=" ".join(METHODS),
    shell:
        "python -m mpi_ensemble tables --summary {input.summary} --stats {input.stats} "
        "--differences {input.differences} --comparison {input.comparison} "
        "--provenance {input.provenance} --summary-html {output.summary_html} "
        "--provenance-html {output.provenance_html} --methods {params.methods} "
        "--method-pages {output.methods} > {log} 2>&1"


rule audit:
    """Every number of the results folder recomputed from what was saved (models rescored, votes and averages redone,
    summary and statistics recomputed, figures and tables checked against the files they were made from); the
    verdict goes into the report, and `make reproduce` fails unless it is clean."""
    input:
        results=[result for result, _ in RESULTS],
        tables=rules.tables.output,
        figures=rules.figures.output,
        models=saved_models(),
    output:
        report("results/audit.txt", caption="../report/audit.rst", category="Summary"),
    log:
        "logs/audit.log",
    benchmark:
        "results/benchmarks/audit.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m mpi_ensemble audit results --out {output} --report-only > {log} 2>&1"
