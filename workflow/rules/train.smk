# Every training job claims all local cores (`threads`), so no two timed jobs overlap; MPI jobs share them out
# (cores // N threads per rank) and, under SLURM, ask for N tasks of that many CPUs each (never N x threads),
# started by the one launcher and spread by the one placement the config names (mpi_resources).
# Every training job saves a checkpoint per rank after each epoch under results/checkpoints/ (checkpoint_dir) and
# a rerun resumes from it; each rank prints one progress line per epoch to the job's log. MPI jobs first remove
# the MPICH shared-memory segments killed ranks left: a requeued SLURM job would attach to its own (mpi_shell).


rule train_sequential:
    """The baseline: one process, the whole training set; threads=1 or threads=all (the paper's setting)."""
    input:
        **ARRAYS,
    output:
        model="results/sequential/threads{threads}/seed{seed}/model.keras",
        result="results/sequential/threads{threads}/seed{seed}/result.json",
        history="results/sequential/threads{threads}/seed{seed}/history.csv",
    log:
        "logs/train_sequential/threads{threads}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_sequential/threads{threads}_seed{seed}.tsv"
    wildcard_constraints:
        threads=r"all|\d+",
        seed=r"\d+",
    conda:
        "../../envs/train.yaml"
    threads: CORES
    params:
        training=TRAINING_ARGS,
        checkpoints=checkpoint_dir,
    shell:
        "python -m mpi_ensemble train_sequential --threads {wildcards.threads} --job-cores {threads} "
        "--seed {wildcards.seed} --train-x {input.train_x} --train-y {input.train_y} "
        "--test-x {input.test_x} --test-y {input.test_y} {params.training} "
        "--model {output.model} --result {output.result} --history {output.history} "
        "--checkpoint-dir {params.checkpoints} > {log} 2>&1"


# One rule per world size N: each rank writes its own model, history and rank record, so the outputs are listed
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
                "results/models/ranks{n}/seed{{seed}}/rank{rank}.keras", n=n, rank=range(n)
            ),
            records=expand(
                "results/models/ranks{n}/seed{{seed}}/rank{rank}.json", n=n, rank=range(n)
            ),
            histories=expand(
                "results/models/ranks{n}/seed{{seed}}/rank{rank}_history.csv",
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
        threads: max(CORES, n)
        resources:
            **mpi_resources(n),
        params:
            out_dir=lambda wc, output: os.path.dirname(output.models[0]),
            launch=launch_prefix,
            training=TRAINING_ARGS,
            checkpoints=checkpoint_dir,
        shell:
            mpi_shell("train_mpi_ranks")


# One model trained by all N ranks together (one rule per N, as above): synchronous data-parallel training
# (gradients allreduced every step), local SGD (weights averaged every `period` local steps) and one-shot averaging
# from a shared start (weights averaged once, at the end).
for n in SHARD_RANKS:

    rule:
        name:
            f"train_data_parallel_ranks{n}"
        input:
            **ARRAYS,
        output:
            **shared_model_outputs("results/data_parallel", n),
        log:
            f"logs/train_data_parallel/ranks{n}/seed{{seed}}.log",
        benchmark:
            f"results/benchmarks/train_data_parallel/ranks{n}_seed{{seed}}.tsv"
        wildcard_constraints:
            seed=r"\d+",
        conda:
            "../../envs/train.yaml"
        threads: max(CORES, n)
        resources:
            **mpi_resources(n),
        params:
            out_dir=lambda wc, output: os.path.dirname(output.model),
            launch=launch_prefix,
            training=TRAINING_ARGS,
            checkpoints=checkpoint_dir,
        shell:
            mpi_shell("train_data_parallel", SCORED)


for n in SHARD_RANKS:

    rule:
        name:
            f"train_local_sgd_ranks{n}"
        input:
            **ARRAYS,
        output:
            **shared_model_outputs("results/local_sgd/period{period}", n),
        log:
            f"logs/train_local_sgd/period{{period}}/ranks{n}/seed{{seed}}.log",
        benchmark:
            f"results/benchmarks/train_local_sgd/period{{period}}_ranks{n}_seed{{seed}}.tsv"
        wildcard_constraints:
            seed=r"\d+",
            period=r"\d+|epoch",
        conda:
            "../../envs/train.yaml"
        threads: max(CORES, n)
        resources:
            **mpi_resources(n),
        params:
            out_dir=lambda wc, output: os.path.dirname(output.model),
            launch=launch_prefix,
            training=TRAINING_ARGS,
            checkpoints=checkpoint_dir,
        shell:
            mpi_shell("train_local_sgd", SCORED, "--period {wildcards.period}")

    rule:
        name:
            f"train_weight_average_shared_start_ranks{n}"
        input:
            **ARRAYS,
        output:
            **shared_model_outputs("results/weight_average_shared_start", n),
        log:
            f"logs/train_weight_average_shared_start/ranks{n}/seed{{seed}}.log",
        benchmark:
            f"results/benchmarks/train_weight_average_shared_start/ranks{n}_seed{{seed}}.tsv"
        wildcard_constraints:
            seed=r"\d+",
        conda:
            "../../envs/train.yaml"
        threads: max(CORES, n)
        resources:
            **mpi_resources(n),
        params:
            out_dir=lambda wc, output: os.path.dirname(output.model),
            launch=launch_prefix,
            training=TRAINING_ARGS,
            checkpoints=checkpoint_dir,
        shell:
            mpi_shell("train_weight_average_shared_start", SCORED)
