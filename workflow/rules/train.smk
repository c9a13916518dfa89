rule train_sequential:
    """The baseline: one process, the whole training set; threads=1 or threads=all (the paper's setting)."""
    input:
        train_x=ARRAYS["train_x"],
        train_y=ARRAYS["train_y"],
        test_x=ARRAYS["test_x"],
        test_y=ARRAYS["test_y"],
    output:
        model="results/sequential/threads{threads}/seed{seed}/model.keras",
        record="results/sequential/threads{threads}/seed{seed}/record.json",
    log:
        "logs/train_sequential/threads{threads}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_sequential/threads{threads}_seed{seed}.tsv"
    wildcard_constraints:
        threads=r"all|\d+",
        seed=r"\d+",
    conda:
        "../../envs/train.yaml"
    # All local cores, so that no other training job runs beside it and disturbs the timing.
    threads: CORES
    params:
        training=TRAINING_ARGS,
    shell:
        "python -m mpi_ensemble.cli sequential --threads {wildcards.threads} --seed {wildcards.seed} "
        "--train-x {input.train_x} --train-y {input.train_y} --test-x {input.test_x} --test-y {input.test_y} "
        "{params.training} --model {output.model} --record {output.record} > {log} 2>&1"


# One rule per world size N: each rank writes its own model and timing record, so the outputs are listed
# exactly and a lost or damaged model file reruns just the job that made it.
for n in RANKS:

    rule:
        name:
            f"train_mpi_ranks{n}"
        input:
            train_x=ARRAYS["train_x"],
            train_y=ARRAYS["train_y"],
        output:
            models=expand(
                "results/models/ranks{n}/seed{{seed}}/rank{rank}.keras",
                n=n,
                rank=range(n),
            ),
            records=expand(
                "results/models/ranks{n}/seed{{seed}}/rank{rank}.json",
                n=n,
                rank=range(n),
            ),
        log:
            f"logs/train_mpi/ranks{n}/seed{{seed}}.log",
        benchmark:
            f"results/benchmarks/train_mpi/ranks{n}_seed{{seed}}.tsv"
        wildcard_constraints:
            seed=r"\d+",
        conda:
            "../../envs/train.yaml"
        # All local cores: the ranks share them out (cores // N threads each) and no job overlaps the timing.
        threads: max(CORES, n)
        resources:
            mpi="mpiexec",
            tasks=n,
            # Each rank's CPUs; under SLURM, --cpus-per-task (else the plugin asks for `threads` per rank: N²).
            cpus_per_task=threads_per_rank(n),
        params:
            out_dir=lambda wc, output: os.path.dirname(output.models[0]),
            threads=lambda wc, resources: resources.cpus_per_task,
            launch=launch_prefix,
            training=TRAINING_ARGS,
        shell:
            "{params.launch} python -m mpi4py -m mpi_ensemble.cli ranks --threads {params.threads} "
            "--job-cores {threads} --seed {wildcards.seed} --train-x {input.train_x} --train-y {input.train_y} "
            "{params.training} --out-dir {params.out_dir} > {log} 2>&1"
