# Rehman et al., "Improving CNN Model Training Time Efficiency using MPI-driven Parallelization and Ensemble
# Learning": MNIST split over N MPI ranks, one CNN per rank, majority vote. See README.md.
# The stages, one rule file each: data -> train -> combine -> summarize.


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/combine.smk"
include: "workflow/rules/summarize.smk"


# Under a cluster executor these run beside Snakemake itself: compute nodes often have no internet (fetch_data),
# and voting and summarizing are seconds of work, not worth a queue wait.
localrules:
    fetch_data,
    ensemble,
    vote_variants,
    weight_average,
    single_shard,
    summarize,
    figures,
    tables,
    method_table,
    audit,


rule all:
    default_target: True
    input:
        rules.summarize.output,
        rules.figures.output,
        rules.tables.output,
        expand("results/tables/methods/{method}.html", method=METHODS),
        saved_models(),
        rules.audit.output,
