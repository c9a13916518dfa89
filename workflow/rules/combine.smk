# The combine jobs read the ensemble's saved members (results/models/ranks{N}/seed{S}); what each writes, and for
# which methods, comes from the method declaration (methods.METHODS: a method's `combine` jobs). Voting, averaging
# and scoring are seconds of work, not worth a queue wait: under a cluster executor they run beside Snakemake.

VOTES = [m.name for m in methods.METHODS if m.combine[-1:] == ("vote_variants",)]
AVERAGES = [m.name for m in methods.METHODS if m.combine[-1:] == ("weight_average",)]


rule ensemble:
    """Majority vote over the N saved models of one MPI job (ties go to the lowest class, as in the paper)."""
    input:
        unpack(rank_files),
        test_x=ARRAYS["test_x"],
        test_y=ARRAYS["test_y"],
    output:
        result=f"{pattern('ensemble_majority')}/result.json",
        probabilities=f"{pattern('ensemble_majority')}/probabilities.npy",
    log:
        log_pattern("ensemble", "ensemble_majority"),
    benchmark:
        benchmark_pattern("ensemble", "ensemble_majority")
    wildcard_constraints:
        ranks=r"\d+",
        seed=r"\d+",
    localrule: True
    conda:
        "../../envs/train.yaml"
    shell:
        f"{CLI} ensemble --models {{input.models}} --records {{input.records}} "
        "--test-x {input.test_x} --test-y {input.test_y} "
        "--result {output.result} --probabilities {output.probabilities} > {log} 2>&1"


rule vote_variants:
    """Soft vote and majority with confidence tie-break over the same N members, from their saved softmax."""
    input:
        records=lambda wc: rank_files(wc)["records"],
        probabilities=rules.ensemble.output.probabilities,
        test_y=ARRAYS["test_y"],
    output:
        **{name: f"{pattern(name)}/result.json" for name in VOTES},
    log:
        log_pattern("vote_variants", "ensemble_majority"),
    benchmark:
        benchmark_pattern("vote_variants", "ensemble_majority")
    wildcard_constraints:
        ranks=r"\d+",
        seed=r"\d+",
    localrule: True
    conda:
        "../../envs/train.yaml"
    params:
        results=lambda wc, output: " ".join(f"--result {name}={output[name]}" for name in VOTES),
    shell:
        f"{CLI} vote_variants --probabilities {{input.probabilities}} "
        "--records {input.records} --test-y {input.test_y} {params.results} > {log} 2>&1"


rule weight_average:
    """The members' weights averaged once (the paper code's first attempt), weighted by each member's test accuracy
    as that code does, and by its validation accuracy; each average saved and scored on the test set.
    """
    input:
        unpack(rank_files),
        probabilities=rules.ensemble.output.probabilities,
        test_x=ARRAYS["test_x"],
        test_y=ARRAYS["test_y"],
    output:
        models=[f"{pattern(name)}/model.keras" for name in AVERAGES],
        results=[f"{pattern(name)}/result.json" for name in AVERAGES],
    log:
        log_pattern("weight_average", "ensemble_majority"),
    benchmark:
        benchmark_pattern("weight_average", "ensemble_majority")
    wildcard_constraints:
        ranks=r"\d+",
        seed=r"\d+",
    localrule: True
    conda:
        "../../envs/train.yaml"
    params:
        methods=AVERAGES,
    shell:
        f"{CLI} weight_average --models {{input.models}} --records {{input.records}} "
        "--probabilities {input.probabilities} --test-x {input.test_x} --test-y {input.test_y} "
        "--methods {params.methods} --out-models {output.models} --out-results {output.results} "
        "> {log} 2>&1"


rule single_shard:
    """Rank 0's model alone: one model trained on 1/N of the data by one rank, scored in a job of its own."""
    input:
        model=f"{methods.members_folder('{ranks}', '{seed}')}/rank0.keras",
        rank0_record=f"{methods.members_folder('{ranks}', '{seed}')}/rank0.json",
        test_x=ARRAYS["test_x"],
        test_y=ARRAYS["test_y"],
    output:
        result=f"{pattern('single_shard')}/result.json",
    log:
        log_pattern("single_shard", "single_shard"),
    benchmark:
        benchmark_pattern("single_shard", "single_shard")
    wildcard_constraints:
        ranks=r"\d+",
        seed=r"\d+",
    localrule: True
    conda:
        "../../envs/train.yaml"
    shell:
        f"{CLI} single_shard --model {{input.model}} --rank0-record {{input.rank0_record}} "
        "--test-x {input.test_x} --test-y {input.test_y} --result {output.result} > {log} 2>&1"
