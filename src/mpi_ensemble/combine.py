"""The combine stage: the ensemble's saved members voted on the test set (the paper's majority vote), the same
members combined by the other vote rules, their weights averaged once (the paper code's first attempt), and the
single-shard control (rank 0's model alone).

The ensemble rule predicts the test set once and stores every member's softmax output; the vote rules and the
test-accuracy weighting reuse those probabilities. The single-shard control scores member 0 in a job of its own, so
that its job time is one model's evaluation, not the N members'. All results are built by records.result_record.
"""

import numpy as np

from . import atomic, data, methods, metrics, records, startup, training, voting
from .model import CLASSES
# Other ways to combine the same N members: (winners, mask of the ties the rule had to break).
VOTE_VARIANTS = {
    "ensemble_soft": lambda probs: (voting.soft_vote(probs), np.zeros(probs.shape[1], dtype=bool)),
    "ensemble_majority_tiebreak": voting.majority_vote_tiebreak,
}


def member_records(paths, ranks=None):
    """The rank records of one MPI job, in rank order; all of them, or the error says which are missing."""
    members = sorted((atomic.read_json(p) for p in paths), key=lambda r: r["rank"])
    expected = list(range(ranks if ranks is not None else members[0]["ranks"]))
    if [r["rank"] for r in members] != expected:
        raise ValueError(f"rank records cover ranks {[r['rank'] for r in members]}, expected {expected}")
    return members


def load_probabilities(path, n_test, members=None):
    """The members' saved softmax outputs, (members, test images, classes), checked against what they belong to."""
    probs = np.load(path)
    if probs.ndim != 3 or probs.shape[1] != n_test or (members is not None and probs.shape[0] != members):
        want = f"({members if members is not None else 'members'}, {n_test}, classes)"
        raise ValueError(f"{path}: expected {want} probabilities, got {probs.shape}; delete it and rerun")
    return probs


def member_accuracy(probabilities, test_y):
    return [float((p.argmax(axis=1) == test_y).mean()) for p in probabilities]


def ensemble(model_paths, record_paths, test_x_path, test_y_path, result_path, probabilities_path):
    """Majority vote of the N saved members (ties to the lowest class, as the paper's bincount().argmax())."""
    keras = startup.import_keras(1)
    members = member_records(record_paths, len(model_paths))
    test_x, test_y = data.load_arrays(test_x_path, test_y_path)
    probabilities = np.stack([training.predict(training.load_model(keras, p), test_x) for p in model_paths])
    winners, ties = voting.majority_vote(probabilities.argmax(axis=2), CLASSES)
    scores = metrics.classification_metrics(test_y, winners, CLASSES)
    atomic.write_npy(probabilities_path, probabilities.astype(np.float32))
    result = records.result_record("ensemble_majority", members, scores, ties.sum(),
                                   member_accuracy(probabilities, test_y), **{methods.DELIVERED: vote_history(members)})
    atomic.write_json(result_path, result)
    return (f"ensemble of {len(model_paths)}: accuracy {scores['accuracy']:.4f}, {int(ties.sum())} ties, "
            f"members {', '.join(f'{a:.4f}' for a in result['member_accuracy'])}")


def vote_history(members):
    """The majority vote's accuracy on the members' common validation sample after every epoch (their records'
    `vote_sample`: what each predicted, the true labels): the validation accuracy of the model the ensemble would
    have delivered then. None where a member lacks an epoch's predictions."""
    samples = [m.get("vote_sample") or {} for m in members]
    labels = [s.get("labels") or [] for s in samples]
    if not samples[0].get("truth") or any(None in epochs or not epochs for epochs in labels):
        return None
    truth = np.asarray(samples[0]["truth"])
    history = []
    for epoch in range(min(len(epochs) for epochs in labels)):
        winners, _ = voting.majority_vote(np.array([member[epoch] for member in labels]), CLASSES)
        history.append(float((winners == truth).mean()))
    return history


def vote_variants(probabilities_path, record_paths, test_y_path, result_paths):
    """The soft vote and the majority with a confidence tie-break, over the same members' probabilities;
    `result_paths`: {method: result.json}, methods of VOTE_VARIANTS."""
    members = member_records(record_paths)
    test_y = np.load(test_y_path)
    probs = load_probabilities(probabilities_path, len(test_y), len(members))
    lines = []
    for method, path in result_paths.items():
        if method not in VOTE_VARIANTS:
            raise ValueError(f"{method} is no vote rule; the vote rules are {', '.join(VOTE_VARIANTS)}")
        winners, ties = VOTE_VARIANTS[method](probs)
        scores = metrics.classification_metrics(test_y, winners, CLASSES)
        # `ties`: those this rule had to break (soft voting has none to break).
        atomic.write_json(path, records.result_record(
            method, members, scores, ties.sum(), member_accuracy(probs, test_y)))
        lines.append(f"{method} ranks={len(members)}: accuracy {scores['accuracy']:.4f} ({int(ties.sum())} ties broken)")
    return "\n".join(lines)


def single_shard(model_path, rank0_record_path, test_x_path, test_y_path, result_path):
    """Rank 0's model alone: one model trained on 1/N of the data (the first shard) by one rank, scored on the
    test set in a job of its own.

    Reusing rank 0 rather than training a separate model makes the comparison paired (the ensemble and its
    control share that member) and costs no training: a separate job with the same seed, shard and threads
    would train the very same model."""
    rank0 = atomic.read_json(rank0_record_path)
    if rank0["rank"] != 0:
        raise ValueError(f"single_shard needs rank 0's record, got rank {rank0['rank']}")
    test_x, test_y = data.load_arrays(test_x_path, test_y_path)
    net = training.load_model(startup.import_keras(1), model_path)
    scores = metrics.classification_metrics(test_y, training.predict(net, test_x).argmax(axis=1), CLASSES)
    atomic.write_json(result_path, records.result_record("single_shard", [rank0], scores, shard=rank0["shard"]))
    return f"single_shard (1/{rank0['ranks']} of the data) seed={rank0['seed']}: accuracy {scores['accuracy']:.4f}"


def average_weights(member_weights, weights):
    """Each weight array as the `weights`-weighted mean over the members (weights normalised to sum to 1)."""
    share = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    return [np.tensordot(share, np.stack(arrays).astype(np.float64), axes=1).astype(np.float32)
            for arrays in zip(*member_weights)]


def validation_accuracy(record):
    """The member's validation accuracy after its last epoch (its record's history)."""
    history = record.get("history", {}).get("val_accuracy")
    if not history:
        raise ValueError(f"rank {record['rank']}'s record has no validation accuracy (validation_split 0?); "
                         "weight_average_by_validation needs a validation part: set validation_split above 0")
    return float(history[-1])


# One-shot weight averages of the same members, by what weighs each member: its test accuracy, as the paper's code
# does (which lets the test set choose the model it is then scored on), or its last epoch's validation accuracy.
WEIGHTINGS = {
    "weight_average_by_test": lambda members, test_accuracy: test_accuracy,
    "weight_average_by_validation": lambda members, test_accuracy: [validation_accuracy(m) for m in members],
}


def weight_average(model_paths, record_paths, probabilities_path, test_x_path, test_y_path, outputs):
    """Both one-shot averages of the members' weights, each saved as a model and scored on the test set.
    `outputs`: {method: (model path, result path)}."""
    keras = startup.import_keras(1)
    members = member_records(record_paths, len(model_paths))
    test_x, test_y = data.load_arrays(test_x_path, test_y_path)
    by_test = member_accuracy(load_probabilities(probabilities_path, len(test_y), len(members)), test_y)
    net = training.load_model(keras, model_paths[0])
    member_weights = [net.get_weights(), *(training.load_model(keras, p).get_weights() for p in model_paths[1:])]
    lines = []
    for method, (model_path, result_path) in outputs.items():
        if method not in WEIGHTINGS:
            raise ValueError(f"{method} is no weight average; the averages are {', '.join(WEIGHTINGS)}")
        share = WEIGHTINGS[method](members, by_test)
        net.set_weights(average_weights(member_weights, share))
        scores = metrics.classification_metrics(test_y, training.predict(net, test_x).argmax(axis=1), CLASSES)
        training.save_model(net, model_path)
        atomic.write_json(result_path, records.result_record(
            method, members, scores, member_accuracy=by_test, averaging_weights=share,
            weights_sha256=training.weights_sha256(net.get_weights())))
        lines.append(f"{method} ranks={len(members)}: accuracy {scores['accuracy']:.4f} "
                     f"(members {', '.join(f'{a:.4f}' for a in by_test)})")
    return "\n".join(lines)
