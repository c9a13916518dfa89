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
        model=f"{pattern('sequential')}/model.keras",
        result=f"{pattern('sequential')}/result.json",
        history=f"{pattern('sequential')}/history.csv",
    log:
        log_pattern(methods.SEQUENTIAL_JOB, "sequential"),
    benchmark:
        benchmark_pattern(methods.SEQUENTIAL_JOB, "sequential")
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
        f"{CLI} train_sequential --threads {{wildcards.threads}} --job-cores {{threads}} "
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
            models=[f"{methods.members_folder(n, '{seed}')}/rank{r}.keras" for r in range(n)],
            records=[f"{methods.members_folder(n, '{seed}')}/rank{r}.json" for r in range(n)],
            histories=[
                f"{methods.members_folder(n, '{seed}')}/rank{r}_history.csv" for r in range(n)
            ],
        log:
            log_pattern(methods.MEMBERS_JOB, "ensemble_majority", n),
        benchmark:
            benchmark_pattern(methods.MEMBERS_JOB, "ensemble_majority", n)
        wildcard_constraints:
            seed=r"\d+",
        conda:
            "../../envs/train.yaml"
        threads: max(CORES, n)
        resources:
            **mpi_resources(n),
        params:
            out_dir=lambda wc, output: os.path.dirname(output.models[0]),
            launch=launch_prefix(n),
            training=TRAINING_ARGS,
            checkpoints=checkpoint_dir,
        shell:
            mpi_shell("train_mpi")


# One model trained by all N ranks together, one rule per method (methods.TOGETHER) and N: rank 0 scores it and
# writes the result; every rank writes its record. Local SGD runs once per averaging period. What differs between
# the rules is in params, which are fixed as each rule is defined (a shell string reads globals when the job runs).
for method in methods.TOGETHER:
    for n in TOGETHER_RANKS:

        rule:
            name:
                f"{method.train}_ranks{n}"
            input:
                **ARRAYS,
            output:
                model=f"{pattern(method.name, n)}/model.keras",
                result=f"{pattern(method.name, n)}/result.json",
                history=f"{pattern(method.name, n)}/history.csv",
                records=[f"{pattern(method.name, n)}/rank{r}.json" for r in range(n)],
            log:
                log_pattern(method.train, method.name, n),
            benchmark:
                benchmark_pattern(method.train, method.name, n)
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
                launch=launch_prefix(n),
                training=TRAINING_ARGS,
                checkpoints=checkpoint_dir,
                command=method.train,
                together=together_flags(method),
            shell:
                mpi_shell("{params.command}", "{params.together}")
