rule fetch_data:
    """Copy the dataset from data_dir or the bundled copy, or download it; verify every checksum."""
    input:
        data_source_files,
    output:
        files=expand("resources/{dataset}/{file}", dataset=DATASET, file=FILES),
    log:
        "logs/fetch_data.log",
    conda:
        "../../envs/data.yaml"
    params:
        dataset=DATASET,
        source=f"--source-dir {DATA_SOURCE}" if DATA_SOURCE else "",
        mirrors=" ".join(f"--mirror {m}" for m in config["mirrors"] or []),
    shell:
        "python -m mpi_ensemble fetch_data --dataset {params.dataset} {params.source} {params.mirrors} "
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
        "python -m mpi_ensemble preprocess --dataset {params.dataset} --inputs {input.files} "
        "--train-x {output.train_x} --train-y {output.train_y} "
        "--test-x {output.test_x} --test-y {output.test_y} {params.subset} > {log} 2>&1"
