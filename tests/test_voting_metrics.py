import numpy as np
import pytest

from mpi_ensemble import metrics, voting


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
