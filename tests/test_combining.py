"""The combine stage: the paper's majority vote, the other vote rules, the single-shard control, the metrics."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mpi_ensemble import combine, metrics, records, voting


def test_majority_vote_picks_most_votes():
    labels = np.array([[1, 2, 3], [1, 2, 4], [0, 2, 4]])
    winners, ties = voting.majority_vote(labels, 10)
    assert winners.tolist() == [1, 2, 4]
    assert ties.tolist() == [False, False, False]


def test_ties_go_to_lowest_class_and_are_counted():
    # two members disagreeing is always a tie: the paper's bincount().argmax() takes the lower digit
    labels = np.array([[7, 3, 5, 9], [2, 3, 8, 1]])
    winners, ties = voting.majority_vote(labels, 10)
    assert winners.tolist() == [2, 3, 5, 1]
    assert ties.tolist() == [True, False, True, True]


def test_three_way_tie_among_four_members():
    labels = np.array([[4], [6], [6], [4]])
    winners, ties = voting.majority_vote(labels, 10)
    assert winners.tolist() == [4] and ties.tolist() == [True]


def test_vote_rejects_wrong_shape():
    with pytest.raises(ValueError, match="members, images"):
        voting.majority_vote(np.array([1, 2, 3]), 10)


def test_metrics_hand_computed():
    # 3 classes, supports 2/1/1; predictions: class0 [0,1], class1 [1], class2 [0]
    y_true = np.array([0, 0, 1, 2])
    y_pred = np.array([0, 1, 1, 0])
    m = metrics.classification_metrics(y_true, y_pred, 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert m["accuracy"] == pytest.approx(0.5)
    # precision: c0 1/2, c1 1/2, c2 0 (never predicted -> 0); weights 0.5/0.25/0.25
    assert m["precision"] == pytest.approx(0.5 * 0.5 + 0.25 * 0.5 + 0)
    # recall: c0 1/2, c1 1, c2 0
    assert m["recall"] == pytest.approx(0.5 * 0.5 + 0.25 * 1.0)
    # f1: c0 0.5, c1 2*0.5*1/1.5 = 2/3, c2 0
    assert m["f1"] == pytest.approx(0.5 * 0.5 + 0.25 * (2 / 3))


def test_perfect_predictions():
    y = np.array([0, 1, 2, 2])
    m = metrics.classification_metrics(y, y, 3)
    assert m["accuracy"] == m["precision"] == m["recall"] == m["f1"] == 1.0


# --- the other vote rules, hand-computed ---------------------------------------------------------------------


def probs(*members):
    """members: lists of per-image class-probability rows over 3 classes."""
    return np.array(members, dtype=np.float64)


def test_soft_vote_averages_probabilities():
    # image 0: member means (0.45, 0.5, 0.05) -> class 1 although member 0 is sure of class 0
    # image 1: means (0.2, 0.3, 0.5) -> class 2
    p = probs([[0.9, 0.1, 0.0], [0.2, 0.2, 0.6]], [[0.0, 0.9, 0.1], [0.2, 0.4, 0.4]])
    assert voting.soft_vote(p).tolist() == [1, 2]


def test_tiebreak_two_members_pick_the_more_confident():
    # image 0: member 0 says 2 (0.6), member 1 says 0 (0.7): tie; summed p: class 0 = 0.3+0.7 = 1.0, class 2 = 0.6+0.1
    #          -> 0 (the paper's rule also gives 0, the lowest class)
    # image 1: member 0 says 2 (0.9), member 1 says 0 (0.5): summed p: class 0 = 0.05+0.5, class 2 = 0.9+0.3 -> 2
    #          (the paper's rule gives 0)
    # image 2: agreement on 1 -> 1, no tie
    p = probs(
        [[0.3, 0.1, 0.6], [0.05, 0.05, 0.9], [0.1, 0.8, 0.1]],
        [[0.7, 0.2, 0.1], [0.5, 0.2, 0.3], [0.2, 0.5, 0.3]],
    )
    winners, ties = voting.majority_vote_tiebreak(p)
    assert winners.tolist() == [0, 2, 1]
    assert ties.tolist() == [True, True, False]
    paper, paper_ties = voting.majority_vote(p.argmax(axis=2), 3)
    assert paper.tolist() == [0, 0, 1] and paper_ties.tolist() == ties.tolist()


def test_tiebreak_only_among_tied_classes_and_majority_wins():
    # three members: votes 1, 1, 0 -> class 1 wins by majority even though class 0 has the largest summed p
    # (0.4 + 0.4 + 1.0 = 1.8 against 0.6 + 0.6 + 0 = 1.2)
    p = probs([[0.4, 0.6, 0.0]], [[0.4, 0.6, 0.0]], [[1.0, 0.0, 0.0]])
    winners, ties = voting.majority_vote_tiebreak(p)
    assert winners.tolist() == [1] and ties.tolist() == [False]
    # four members, 2-2 tie between 0 and 2; class 1 has the largest summed p but holds no top vote -> never chosen
    p = probs([[0.5, 0.45, 0.05]], [[0.5, 0.45, 0.05]], [[0.0, 0.45, 0.55]], [[0.0, 0.45, 0.55]])
    winners, ties = voting.majority_vote_tiebreak(p)
    assert winners.tolist() == [2] and ties.tolist() == [True]  # summed p: class 0 = 1.0, class 2 = 1.2


def test_vote_variants_reject_wrong_shape():
    with pytest.raises(ValueError, match="members, images, classes"):
        voting.soft_vote(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="members, images, classes"):
        voting.majority_vote_tiebreak(np.zeros((2, 3)))



# --- results of the combine stage, through the shared record builder -------------------------------------------


def rank_record(rank, ranks=2, threads=1, fit=2.0):
    return {"method": "ensemble_member", "rank": rank, "ranks": ranks, "seed": 0, "precision": "float32",
            "settings": {"epochs": 1, "batch_size": 64, "precision": "float32"}, "job_cores": 2, "oversubscribed": False,
            "fit_seconds": fit + rank, "epoch_seconds": [fit + rank], "fit_cpu_seconds": 1.0, "cpu_seconds": 3.0,
            "wall_seconds": 9.0, "peak_rss_mib": 100.0 + rank, "train_images": 4, "shard": [5 * rank, 5 * rank + 5],
            "thread_settings": {"threads": threads, "affinity": [rank], "env": {}},
            "host": "h", "cpu_model": "c", "cpu_count": 2, "isa_flags": [], "versions": {}, "scheduler": {},
            "mpi_library": "MPICH"}


@pytest.fixture
def saved_members(tmp_path):
    p = probs(
        [[0.3, 0.1, 0.6], [0.05, 0.05, 0.9], [0.1, 0.8, 0.1]],
        [[0.7, 0.2, 0.1], [0.5, 0.2, 0.3], [0.2, 0.5, 0.3]],
    )
    np.save(tmp_path / "probabilities.npy", p.astype(np.float32))
    np.save(tmp_path / "test_y.npy", np.array([0, 2, 1]))
    paths = []
    for r in range(2):
        paths.append(tmp_path / f"rank{r}.json")
        paths[-1].write_text(json.dumps(rank_record(r)))
    return tmp_path, paths


def test_vote_variants_score_and_share_the_members_timing(saved_members):
    folder, paths = saved_members
    outs = {m: folder / f"{m}.json" for m in combine.VOTE_VARIANTS}
    combine.vote_variants(folder / "probabilities.npy", paths, folder / "test_y.npy", outs)
    tiebreak, soft = (json.loads(outs[m].read_text()) for m in ("ensemble_majority_tiebreak", "ensemble_soft"))
    assert tiebreak["metrics"]["accuracy"] == 1.0 and tiebreak["ties"] == 2
    # soft: image 0 means (0.5, 0.15, 0.35) -> 0; image 1 (0.275, 0.125, 0.6) -> 2; image 2 -> 1
    assert soft["metrics"]["accuracy"] == 1.0 and soft["ties"] == 0
    assert tiebreak["member_accuracy"] == pytest.approx([2 / 3, 2 / 3])  # [2, 2, 1] and [0, 0, 1] vs [0, 2, 1]
    for result in (tiebreak, soft):
        assert [t["fit_seconds"] for t in result["rank_timing"]] == [2.0, 3.0]
        assert result["precision"] == "float32" and result["cores_used"] == 2 and result["ranks"] == 2


def test_single_shard_is_rank0_alone(saved_members):
    """Member 0's saved model, scored on the test set in the single-shard job itself."""
    import keras

    from mpi_ensemble import model, training

    folder, paths = saved_members
    rng = np.random.default_rng(0)
    np.save(folder / "test_x.npy", rng.random((3, 28, 28, 1), dtype=np.float32))
    net = model.build_model(keras)
    training.save_model(net, folder / "rank0.keras")
    predicted = training.predict(net, np.load(folder / "test_x.npy")).argmax(axis=1)
    out = folder / "single.json"

    def rule(record):  # the rule's command, in a process of its own as the workflow runs it
        return subprocess.run([sys.executable, "-m", "mpi_ensemble", "single_shard", "--model", folder / "rank0.keras",
                               "--rank0-record", record, "--test-x", folder / "test_x.npy", "--test-y",
                               folder / "test_y.npy", "--result", out], capture_output=True, text=True, timeout=300)

    assert rule(paths[0]).returncode == 0
    result = json.loads(out.read_text())
    assert result["metrics"]["accuracy"] == pytest.approx(np.mean(predicted == [0, 2, 1]))
    assert result["ranks"] == 2 and [t["rank"] for t in result["rank_timing"]] == [0]
    assert result["cores_used"] == 1 and result["precision"] == "float32" and result["shard"] == [0, 5]
    refused = rule(paths[1])
    assert refused.returncode == 1 and "single_shard needs rank 0's record, got rank 1" in refused.stderr


def test_members_must_be_complete_and_probabilities_must_fit(saved_members):
    folder, paths = saved_members
    with pytest.raises(ValueError, match=r"cover ranks \[1\], expected \[0, 1\]"):
        combine.member_records(paths[1:], 2)
    with pytest.raises(ValueError, match=r"expected \(3, 3, classes\)"):
        combine.load_probabilities(folder / "probabilities.npy", 3, members=3)


def test_result_record_is_the_same_for_every_method():
    members = [rank_record(0, threads=2, ranks=1)]
    result = records.result_record("sequential", members, {"accuracy": 0.5})
    assert result["cores_used"] == 2 and result["member_accuracy"] == [0.5] and result["ties"] == 0
    members = [rank_record(r, ranks=8, threads=1) for r in range(8)]
    assert records.result_record("ensemble_majority", members, {"accuracy": 0.5})["cores_used"] == 2  # the job's
    assert records.cores_used(1, "all", 16) == 16 and records.cores_used(2, 4, 16) == 8
    keys = set(records.result_record("single_shard", members[:1], {"accuracy": 0.5}))
    assert keys >= {"method", "ranks", "seed", "threads", "precision", "epochs", "cores_used", "oversubscribed",
                    "metrics", "ties", "member_accuracy", "rank_timing", "host", "isa_flags", "versions"}


def test_one_shot_average_weighs_each_member_by_its_normalised_accuracy():
    first = [np.full((2, 3), 1.0, np.float32), np.array([0.0, 4.0], np.float32)]
    second = [np.full((2, 3), 3.0, np.float32), np.array([2.0, 0.0], np.float32)]
    equal = combine.average_weights([first, second], [0.9, 0.9])
    np.testing.assert_array_equal(equal[0], np.full((2, 3), 2.0))
    np.testing.assert_array_equal(equal[1], [1.0, 2.0])
    # accuracies 0.96 and 0.64 weigh 0.6 and 0.4, whatever their scale
    for scale in (1.0, 100.0):
        average = combine.average_weights([first, second], [0.96 * scale, 0.64 * scale])
        np.testing.assert_allclose(average[0], np.full((2, 3), 0.6 * 1 + 0.4 * 3), rtol=1e-6)
        np.testing.assert_allclose(average[1], [0.4 * 2, 0.6 * 4], rtol=1e-6)
        assert [a.dtype for a in average] == [np.float32, np.float32] and average[0].shape == (2, 3)


def test_weighting_by_validation_names_a_member_without_a_validation_part():
    assert combine.validation_accuracy({"rank": 0, "history": {"val_accuracy": [0.5, 0.75]}}) == 0.75
    with pytest.raises(ValueError, match="rank 1's record has no validation accuracy.*set validation_split above 0"):
        combine.validation_accuracy({"rank": 1, "history": {"accuracy": [0.5]}})
