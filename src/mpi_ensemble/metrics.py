"""Classification metrics, weighted as scikit-learn's `average='weighted'` (zero where undefined)."""

import numpy as np


def confusion_matrix(y_true, y_pred, classes):
    """Rows are true classes, columns predicted."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def _safe_divide(num, den):
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def classification_metrics(y_true, y_pred, classes):
    """Accuracy and support-weighted precision, recall and F1, plus the confusion matrix."""
    matrix = confusion_matrix(y_true, y_pred, classes)
    true_pos = np.diag(matrix)
    support = matrix.sum(axis=1)
    precision = _safe_divide(true_pos, matrix.sum(axis=0))
    recall = _safe_divide(true_pos, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    weights = support / max(support.sum(), 1)
    return {
        "accuracy": float(true_pos.sum() / max(matrix.sum(), 1)),
        "precision": float((precision * weights).sum()),
        "recall": float((recall * weights).sum()),
        "f1": float((f1 * weights).sum()),
        "confusion_matrix": matrix.tolist(),
    }
