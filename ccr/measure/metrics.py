"""Retrieval metrics as pure functions over arrays: recall@K, recall matrices, forgetting, BWT.

A recall matrix A is (n, n) in percent: A[s][i] is the recall on task i after learning task s,
defined for i <= s (NaN above the diagonal).
"""

from __future__ import annotations

import math

import numpy as np

DIRECTIONS = ("i2t", "t2i")


def first_hit(result_owner: np.ndarray, query_owner: np.ndarray) -> np.ndarray:
    """(nq,) the rank (0-based) of each query's first true item among its results; a large number where none
    was retrieved. A hit at R@K is `first_hit < K`."""
    hit = result_owner == np.asarray(query_owner)[:, None]
    return np.where(hit.any(1), hit.argmax(1), np.iinfo(np.int64).max).astype(np.int64)


def negative_flips(before: np.ndarray, after: np.ndarray, k: int) -> tuple[int, int]:
    """Queries that were hits at R@K and are misses now (RACT's negative flips, for retrieval): (flipped,
    queries), from the first-hit ranks of the same queries `before` and `after` a model update."""
    return int(np.sum((before < k) & (after >= k))), len(before)


def recall_at_k(result_owner: np.ndarray, query_owner: np.ndarray, ks: list[int]) -> dict[int, float]:
    """Percent of queries whose true item is among the first K results.

    result_owner: (nq, >=max K) the image each retrieved item belongs to (for captions: its image);
    query_owner: (nq,) the image each query belongs to.
    """
    if len(query_owner) == 0:
        return {k: float("nan") for k in ks}
    first = first_hit(result_owner, query_owner)
    return {k: float(100.0 * np.mean(first < k)) for k in ks}


def chance_recall(k: int, gallery: int, relevant: float = 1.0) -> float:
    """R@k (%) of a random ranking: a query with `relevant` matching items among `gallery` finds one in its top
    k with probability 1 - C(gallery - relevant, k) / C(gallery, k) (`relevant` may be a mean, as captions
    per image are)."""
    if gallery <= 0:
        return float("nan")
    if k >= gallery - relevant + 1:
        return 100.0
    miss = 1.0
    for i in range(int(k)):
        miss *= max(0.0, (gallery - relevant - i) / (gallery - i))
    return 100.0 * (1.0 - miss)


def rsum_ks(ks) -> list[int]:
    """The K that rsum adds: those of 1, 5, 10 that were measured (the usual rsum), else every measured K."""
    ks = sorted(set(ks))
    return [k for k in ks if k in (1, 5, 10)] or ks


def rsum(recalls: dict[str, dict[int, float]]) -> float:
    """Sum of R@1, R@5, R@10 in both directions (the usual rsum; see `rsum_ks` for other K sets)."""
    return float(sum(recalls[d][k] for d in DIRECTIONS for k in rsum_ks(recalls[d])))


def rsum_matrix(matrices: dict[str, dict[int, np.ndarray]]) -> np.ndarray:
    """Cell-wise rsum of recall matrices {direction: {K: (n, n)}} (the K of `rsum_ks`)."""
    return sum(matrices[d][k] for d in DIRECTIONS for k in rsum_ks(matrices[d]))


def final_average(a: np.ndarray) -> float:
    """Mean recall over all tasks after the last task."""
    return float(np.mean(a[-1]))


def forgetting_per_task(a: np.ndarray) -> np.ndarray:
    """F_i = max_{i<=s<n} A[s][i] - A[n][i], for the first n-1 tasks."""
    n = len(a)
    return np.array([np.nanmax(a[i:n - 1, i]) - a[n - 1, i] for i in range(n - 1)])


def forgetting(a: np.ndarray) -> float:
    """Average forgetting over the first n-1 tasks (0 for one task)."""
    f = forgetting_per_task(a)
    return float(f.mean()) if len(f) else 0.0


def bwt(a: np.ndarray) -> float:
    """Backward transfer: mean over the first n-1 tasks of A[n][i] - A[i][i] (0 for one task)."""
    n = len(a)
    return float(np.mean([a[n - 1, i] - a[i, i] for i in range(n - 1)])) if n > 1 else 0.0


def to_json_matrix(a: np.ndarray) -> list[list[float | None]]:
    """NaN (above the diagonal) becomes null."""
    return [[None if (isinstance(v, float) and math.isnan(v)) else float(v) for v in row.tolist()] for row in a]


def from_json_matrix(rows: list[list[float | None]]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)
