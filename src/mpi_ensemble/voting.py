"""Combining member predictions."""

import numpy as np


def vote_counts(labels, classes):
    """labels: (members, n) int class predictions -> (n, classes) vote counts."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected (members, images) predictions, got shape {labels.shape}")
    counts = np.zeros((labels.shape[1], classes), dtype=np.int64)
    for member in labels:
        counts[np.arange(labels.shape[1]), member] += 1
    return counts


def majority_vote(labels, classes):
    """The paper's rule (bincount + argmax): most votes wins, ties go to the lowest class.

    Returns the winners and a boolean mask of the images whose top vote count was shared.
    """
    counts = vote_counts(labels, classes)
    top = counts.max(axis=1)
    ties = (counts == top[:, None]).sum(axis=1) > 1
    return counts.argmax(axis=1), ties
