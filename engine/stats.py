"""Rank statistics shared by the evaluation, the toy trainers and the checkpoint diff.

``auroc_matrix`` scores many detectors against many binary outcomes at once: the AUROC of a score column is
the probability that a random positive scores above a random negative (ties count one half), computed from
ranks (Mann-Whitney U) in one sort per column.

>>> auroc_matrix(np.array([[0.1], [0.9], [0.5]]), np.array([[False], [True], [True]])).round(3).tolist()
[[1.0]]
"""

from __future__ import annotations

import numpy as np


def auroc_matrix(scores_NS: np.ndarray, positive_NC: np.ndarray) -> np.ndarray:
    """AUROC of every score column for every binary concept column, (S, C); ties count one half."""
    n = scores_NS.shape[0]
    n_pos = positive_NC.sum(0).astype(np.float64)
    n_neg = n - n_pos
    out = np.zeros((scores_NS.shape[1], positive_NC.shape[1]))
    pos = positive_NC.astype(np.float64)
    for s in range(scores_NS.shape[1]):
        column = scores_NS[:, s]
        order = np.argsort(column, kind="stable")
        sorted_vals = column[order]
        ranks = np.empty(n)
        # average rank within ties
        _, starts, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
        avg = starts + (counts + 1) / 2.0
        ranks[order] = np.repeat(avg, counts)
        out[s] = (ranks @ pos - n_pos * (n_pos + 1) / 2) / np.maximum(n_pos * n_neg, 1)
    return out
