"""Accuracy (mean, sample sd, each seed) and what each rank sent, per method and N, from a summary.csv."""
import sys
import pandas as pd
d = pd.read_csv(sys.argv[1], dtype={"threads": str, "period": str})
d["period"] = d["period"].fillna("")
order = ["ensemble_majority", "ensemble_soft", "ensemble_majority_tiebreak", "single_shard", "weight_average_by_test",
         "weight_average_by_validation", "weight_average_shared_start", "local_sgd", "data_parallel"]
g = d.groupby(["method", "period", "ranks"])
t = g.agg(n=("accuracy", "size"), acc_mean=("accuracy", "mean"), acc_sd=("accuracy", "std"),
          accs=("accuracy", lambda a: " ".join(f"{x:.4f}" for x in a)),
          allreduces=("allreduces_per_rank", "mean"), mbytes=("allreduce_bytes_per_rank", lambda b: b.mean() / 1e6),
          oversubscribed=("oversubscribed", "first")).reset_index()
t["order"] = t["method"].map(order.index)
t = t.sort_values(["ranks", "order", "period"])
pd.set_option("display.width", 250)
print(t.drop(columns="order").to_string(index=False))
