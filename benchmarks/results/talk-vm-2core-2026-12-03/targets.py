"""Targets and summarize arguments of the communication run: seeds 0-2, N = 2 and 8, every method whose ranks
talk or vote."""
import sys
SEEDS, RANKS = (0, 1, 2), (2, 8)
results = []  # (result, [benchmarks])
for s in SEEDS:
    for n in RANKS:
        b = lambda job: f"results/benchmarks/{job}/ranks{n}_seed{s}.tsv"
        train, vote = b("train_mpi"), b("ensemble")
        results.append((f"results/ensemble_majority/ranks{n}/seed{s}/result.json", [train, vote]))
        for w in ("weight_average_by_test", "weight_average_by_validation"):
            results.append((f"results/{w}/ranks{n}/seed{s}/result.json", [train, vote, b("weight_average")]))
        results.append((f"results/weight_average_shared_start/ranks{n}/seed{s}/result.json",
                        [b("train_weight_average_shared_start")]))
        for k in ("16", "epoch"):
            results.append((f"results/local_sgd/period{k}/ranks{n}/seed{s}/result.json",
                            [f"results/benchmarks/train_local_sgd/period{k}_ranks{n}_seed{s}.tsv"]))
        results.append((f"results/data_parallel/ranks{n}/seed{s}/result.json", [b("train_data_parallel")]))
        for v in ("ensemble_soft", "ensemble_majority_tiebreak"):
            results.append((f"results/{v}/ranks{n}/seed{s}/result.json", [train, vote, b("vote_variants")]))
        results.append((f"results/single_shard/ranks{n}/seed{s}/result.json", [train, vote, b("single_shard")]))
if sys.argv[1] == "targets":
    print(" ".join(r for r, _ in results))
else:
    print("--results", " ".join(r for r, _ in results), "--benchmarks", " ".join(",".join(x) for _, x in results))
