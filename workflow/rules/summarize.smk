rule summarize:
    """Every result as a row of summary.csv (job wall times from the benchmarks), the statistics over seeds, the
    differences against the seed spread, the paper comparison, per-rank times and provenance."""
    input:
        results=result_files(),
        benchmarks=benchmark_files(),
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
    localrule: True
    conda:
        "../../envs/summarize.yaml"
    params:
        cores=CORES,
        targets=" ".join(map(str, config["target_accuracies"])),
        methods=METHOD_FACTS,  # for the caption
    shell:
        f"{CLI} summarize --results {{input.results}} --paper {{input.paper}} --cores {{params.cores}} "
        "--targets {params.targets} "
        "--summary {output.summary} --stats {output.stats} --differences {output.differences} "
        "--comparison {output.comparison} --rank-times {output.rank_times} "
        "--provenance {output.provenance} > {log} 2>&1"


rule figures:
    """The paper's figures with its values beside ours, the speed-up, per-rank times, the methods and the
    training curves."""
    input:
        stats="results/summary_stats.csv",
        rank_times="results/rank_times.csv",
        paper=PAPER,
        histories=[path for _, path in histories()],
    output:
        **{
            key: report(
                f"results/figures/{name}",
                caption=f"../report/{key}.rst",
                category="Figures",
            )
            for key, name in methods.FIGURES.items()
        },
    log:
        "logs/figures.log",
    localrule: True
    conda:
        "../../envs/summarize.yaml"
    params:
        histories=" ".join(f"{label}={path}" for label, path in histories()),
        methods=METHOD_FACTS,  # for the captions
        networks=json.dumps(config["networks"]),
        outputs=lambda wc, output: " ".join(f"{key}={output[key]}" for key in methods.FIGURES),
    shell:
        f"{CLI} figures --stats {{input.stats}} --rank-times {{input.rank_times}} "
        "--paper {input.paper} --outputs {params.outputs} "
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
            for method in methods.NAMES
        ],
    log:
        "logs/tables.log",
    localrule: True
    conda:
        "../../envs/summarize.yaml"
    params:
        methods=" ".join(methods.NAMES),
    shell:
        f"{CLI} tables --summary {{input.summary}} --stats {{input.stats}} "
        "--differences {input.differences} --comparison {input.comparison} "
        "--provenance {input.provenance} --summary-html {output.summary_html} "
        "--provenance-html {output.provenance_html} --methods {params.methods} "
        "--method-pages {output.methods} > {log} 2>&1"


rule audit:
    """Every number of the results folder recomputed from what was saved (models rescored, votes and averages redone,
    summary and statistics recomputed, figures and tables checked against the files they were made from); the
    verdict goes into the report, and `make reproduce` fails unless it is clean."""
    input:
        results=result_files(),
        paper=PAPER,
        tables=rules.tables.output,
        figures=rules.figures.output,
        models=saved_models(),
    output:
        report("results/audit.txt", caption="../report/audit.rst", category="Summary"),
    log:
        "logs/audit.log",
    benchmark:
        "results/benchmarks/audit.tsv"
    localrule: True
    conda:
        "../../envs/train.yaml"
    shell:
        f"{CLI} audit results --paper {{input.paper}} --results {{input.results}} --out {{output}} --report-only "
        "> {log} 2>&1"
