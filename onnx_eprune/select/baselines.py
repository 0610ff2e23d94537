"""Baseline channel rankings that share the statistics, allocation and re-fit of the
entropic method: filter L1 norm and random."""

from __future__ import annotations

import numpy as np


def l1_ranking(producer_rows: list[np.ndarray]) -> np.ndarray:
    """Channels by decreasing filter L1 norm (most important first).

    ``producer_rows``: for every producer of the group, its weight with output channels on
    axis 0, reshaped to (C, -1). Each producer's norms are divided by their mean so that
    coupled layers of different scale count equally (as in group-norm pruning).
    """
    score = np.zeros(producer_rows[0].shape[0])
    for rows in producer_rows:
        norms = np.abs(rows).sum(axis=1)
        score += norms / max(float(norms.mean()), 1e-30)
    return np.argsort(-score, kind="stable")


def random_ranking(channels: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random order of the channels."""
    return rng.permutation(channels)
