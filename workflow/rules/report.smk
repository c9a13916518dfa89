rule report:
    """Aggregate every result into summary.csv and draw the paper's figures with its values beside ours."""
    input:
        sequential=expand(
            "results/sequential/threads{threads}/seed{seed}/record.json",
            threads=BASELINE_THREADS,
            seed=SEEDS,
        ),
        sequential_benchmarks=expand(
            "results/benchmarks/train_sequential/threads{threads}_seed{seed}.tsv",
            threads=BASELINE_THREADS,
            seed=SEEDS,
        ),
        ensemble=expand(
            "results/ensemble/ranks{ranks}/seed{seed}/metrics.json",
            ranks=RANKS,
            seed=SEEDS,
        ),
        ensemble_benchmarks=expand(
            "results/benchmarks/train_mpi/ranks{ranks}_seed{seed}.tsv",
            ranks=RANKS,
            seed=SEEDS,
        ),
        paper="paper/reported_results.csv",
        # Methods beyond the paper (controls.smk).
        extra_results=[result for result, _ in EXTRA_RESULTS],
        extra_benchmarks=[bench for _, bench in EXTRA_RESULTS],
        timed_results=TIMED_RESULTS,
    output:
        summary=report(
            "results/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
        provenance="results/provenance.json",
        fig_sequential=report(
            "results/figures/fig5_sequential.png",
            caption="../report/fig5.rst",
            category="Figures",
        ),
        fig_scaling=report(
            "results/figures/fig6_scaling.png",
            caption="../report/fig6.rst",
            category="Figures",
        ),
        fig_speedup=report(
            "results/figures/speedup.png",
            caption="../report/speedup.rst",
            category="Figures",
        ),
        fig_rank_times=report(
            "results/figures/rank_times.png",
            caption="../report/rank_times.rst",
            category="Figures",
        ),
    log:
        "logs/report.log",
    conda:
        "../../envs/report.yaml"
    params:
        cores=CORES,
    shell:
        "python -m mpi_ensemble.cli report --sequential {input.sequential} "
        "--sequential-benchmarks {input.sequential_benchmarks} --ensemble {input.ensemble} "
        "--ensemble-benchmarks {input.ensemble_benchmarks} --paper {input.paper} --cores {params.cores} "
        "--summary {output.summary} --provenance {output.provenance} "
        "--fig-sequential {output.fig_sequential} --fig-scaling {output.fig_scaling} "
        "--fig-speedup {output.fig_speedup} --fig-rank-times {output.fig_rank_times} "
        "--extra-results {input.extra_results} --extra-benchmarks {input.extra_benchmarks} "
        "--timed-results {input.timed_results} > {log} 2>&1"
