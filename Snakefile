# Rehman et al., "Improving CNN Model Training Time Efficiency using MPI-driven Parallelization and Ensemble
# Learning": MNIST split over N MPI ranks, one CNN per rank, majority vote. See README.md.


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/controls.smk"
include: "workflow/rules/report.smk"


# Under a cluster executor these run beside Snakemake itself: compute nodes often have no internet (fetch_data),
# and voting and the report are seconds of work, not worth a queue wait.
localrules:
    fetch_data,
    ensemble,
    report,
    vote_variants,
    single_shard,
    method_table,
    beyond_report,


rule all:
    default_target: True
    input:
        "results/summary.csv",
        "results/figures/fig5_sequential.png",
        "results/figures/fig6_scaling.png",
        "results/figures/speedup.png",
        "results/figures/rank_times.png",
        rules.beyond_report.output,
        expand("results/report/methods/{method}.html", method=METHODS),
        saved_models(),
