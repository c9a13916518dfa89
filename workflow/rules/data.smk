if GIT_FILES:

    rule unpack_bundled:
        """The bundled dataset and the paper's numbers of a workflow read from git, copied out of its repository
        once (Snakemake's source cache reads git files as text, and would rerun the summary on every run).
        """
        output:
            files=list(GIT_FILES),
        log:
            "logs/unpack_bundled.log",
        localrule: True
        conda:
            "../../envs/data.yaml"
        params:
            sources=" ".join(f"{folder}:{ref}:{path}" for folder, ref, path in GIT_FILES.values()),
        shell:
            f"{CLI} unpack_bundled --sources {{params.sources}} --out {{output.files}} > {{log}} 2>&1"


rule fetch_data:
    """Copy the dataset from data_dir or the bundled copy, or download it; verify every checksum."""
    input:
        data_source_files,
    output:
        files=expand("resources/{dataset}/{file}", dataset=DATASET, file=FILES),
    log:
        "logs/fetch_data.log",
    # Compute nodes often have no internet: under a cluster executor this runs beside Snakemake.
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        dataset=DATASET,
        source=f"--source-dir {DATA_SOURCE}" if DATA_SOURCE else "",
        mirrors=" ".join(f"--mirror {m}" for m in config["mirrors"] or []),
    shell:
        f"{CLI} fetch_data --dataset {{params.dataset}} {{params.source}} {{params.mirrors}} "
        "--out {output.files} > {log} 2>&1"


rule preprocess:
    """Decode the IDX files once into float32 NHWC arrays that every job memory-maps."""
    input:
        files=rules.fetch_data.output.files,
    output:
        **ARRAYS,
    log:
        "logs/preprocess.log",
    benchmark:
        "results/benchmarks/preprocess.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        dataset=DATASET,
        subset=subset_args(),
    shell:
        f"{CLI} preprocess --dataset {{params.dataset}} --inputs {{input.files}} "
        "--train-x {output.train_x} --train-y {output.train_y} "
        "--test-x {output.test_x} --test-y {output.test_y} {params.subset} > {log} 2>&1"
