rule ensemble:
    """Majority vote over the N saved models of one MPI job (ties go to the lowest class, as in the paper)."""
    input:
        unpack(rank_models),
        test_x=ARRAYS["test_x"],
        test_y=ARRAYS["test_y"],
    output:
        metrics="results/ensemble/ranks{ranks}/seed{seed}/metrics.json",
        probabilities="results/ensemble/ranks{ranks}/seed{seed}/probabilities.npy",
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
        "python -m mpi_ensemble.cli ensemble --models {input.models} --records {input.records} "
        "--test-x {input.test_x} --test-y {input.test_y} "
        "--metrics {output.metrics} --probabilities {output.probabilities} > {log} 2>&1"
