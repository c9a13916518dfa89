rule ensemble:
    """Majority vote over the N saved models of one MPI job (ties go to the lowest class, as in the paper)."""
    input:
        unpack(rank_files),
        test_x=ARRAYS["test_x"],
        test_y=ARRAYS["test_y"],
    output:
        result="results/ensemble_majority/ranks{ranks}/seed{seed}/result.json",
        probabilities="results/ensemble_majority/ranks{ranks}/seed{seed}/probabilities.npy",
    log:
        "logs/ensemble/ranks{ranks}/seed{seed}.log",
    benchmark:
        "results/benchmarks/ensemble/ranks{ranks}_seed{seed}.tsv"
    wildcard_constraints:
        ranks=r"\d+",
        seed=r"\d+",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m mpi_ensemble ensemble --models {input.models} --records {input.records} "
        "--test-x {input.test_x} --test-y {input.test_y} "
        "--result {output.result} --probabilities {output.probabilities} > {log} 2>&1"


rule vote_variants:
    """Soft vote and majority with confidence tie-break over the same N members, from their saved softmax."""
    input:
        records=lambda wc: rank_files(wc)["records"],
        probabilities="results/ensemble_majority/ranks{ranks}/seed{seed}/probabilities.npy",
        test_y=ARRAYS["test_y"],
    output:
        **{v: f"results/{v}/ranks{{ranks}}/seed{{seed}}/result.json" for v in VOTE_VARIANTS},
    log:
        "logs/vote_variants/ranks{ranks}/seed{seed}.log",
    benchmark:
        "results/benchmarks/vote_variants/ranks{ranks}_seed{seed}.tsv"
    wildcard_constraints:
        ranks=r"\d+",
        seed=r"\d+",
    conda:
        "../../envs/summarize.yaml"
    shell:
        "python -m mpi_ensemble vote_variants --probabilities {input.probabilities} "
        "--records {input.records} --test-y {input.test_y} "
        "--ensemble_soft {output.ensemble_soft} "
        "--ensemble_majority_tiebreak {output.ensemble_majority_tiebreak} > {log} 2>&1"


rule weight_average:
    """The members' weights averaged once (the paper code's first attempt), weighted by each member's test accuracy
    as that code does, and by its validation accuracy; each average saved and scored on the test set.
    """
    input:
        unpack(rank_files),
        probabilities="results/ensemble_majority/ranks{ranks}/seed{seed}/probabilities.npy",
        test_x=ARRAYS["test_x"],
        test_y=ARRAYS["test_y"],
    output:
        **{
            f"{method}_{kind}": f"results/{method}/ranks{{ranks}}/seed{{seed}}/{name}"
            for method in WEIGHT_AVERAGES
            for kind, name in (("model", "model.keras"), ("result", "result.json"))
        },
    log:
        "logs/weight_average/ranks{ranks}/seed{seed}.log",
    benchmark:
        "results/benchmarks/weight_average/ranks{ranks}_seed{seed}.tsv"
    wildcard_constraints:
        ranks=r"\d+",
        seed=r"\d+",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m mpi_ensemble weight_average --models {input.models} --records {input.records} "
        "--probabilities {input.probabilities} --test-x {input.test_x} --test-y {input.test_y} "
        "--weight_average_by_test_model {output.weight_average_by_test_model} "
        "--weight_average_by_test_result {output.weight_average_by_test_result} "
        "--weight_average_by_validation_model {output.weight_average_by_validation_model} "
        "--weight_average_by_validation_result {output.weight_average_by_validation_result} > {log} 2>&1"


rule single_shard:
    """Rank 0's model alone: one model trained on 1/N of the data in the wall time of one rank."""
    input:
        probabilities="results/ensemble_majority/ranks{ranks}/seed{seed}/probabilities.npy",
        rank0_record="results/models/ranks{ranks}/seed{seed}/rank0.json",
        test_y=ARRAYS["test_y"],
    output:
        result="results/single_shard/ranks{ranks}/seed{seed}/result.json",
    log:
        "logs/single_shard/ranks{ranks}/seed{seed}.log",
    benchmark:
        "results/benchmarks/single_shard/ranks{ranks}_seed{seed}.tsv"
    wildcard_constraints:
        ranks=r"\d+",
        seed=r"\d+",
    conda:
        "../../envs/summarize.yaml"
    shell:
        "python -m mpi_ensemble single_shard --probabilities {input.probabilities} "
        "--rank0-record {input.rank0_record} --test-y {input.test_y} --result {output.result} > {log} 2>&1"
