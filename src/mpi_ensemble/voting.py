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


def soft_vote(probabilities):
    """Mean of the members' softmax outputs, then argmax: probabilities (members, n, classes) -> (n,) labels.

    Exact ties of the mean (practically never with float outputs) go to the lowest class, as argmax does.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 3:
        raise ValueError(f"expected (members, images, classes) probabilities, got shape {probabilities.shape}")
    return probabilities.mean(axis=0).argmax(axis=1)


def majority_vote_tiebreak(probabilities):
    """Majority of the members' argmax labels; a tie goes to the tied class with the largest summed probability.

    Returns the winners and the mask of tied images (the same ties `majority_vote` counts, now broken by
    confidence instead of by the lowest class).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 3:
        raise ValueError(f"expected (members, images, classes) probabilities, got shape {probabilities.shape}")
    classes = probabilities.shape[2]
    counts = vote_counts(probabilities.argmax(axis=2), classes)
    top = counts.max(axis=1, keepdims=True)
    tied_classes = counts == top
    ties = tied_classes.sum(axis=1) > 1
    # Among the classes holding the top vote count only, pick the one the members are most confident in.
    confidence = np.where(tied_classes, probabilities.sum(axis=0), -np.inf)
    return confidence.argmax(axis=1), ties
