"""Collaborative semantic IDs for the behavioral view (MODEL.md v2 step 3).

Residual k-means (as in TIGER's RQ, without the VAE) over the item vectors that
stage 1 learned from the interactions: level 1 clusters the vectors, level 2
clusters what level 1 left over, and so on. Items that people consume together
get nearby vectors, so they share their first codes: the behavioral prompt then
carries tokens that co-consumed items have in common, where `#<id>` tokens
carried nothing the frozen lower layers could use.

Rendering: one token per level. Level 1 is an uppercase letter, level 2 a
space and a lowercase letter, level 3 a space and an uppercase letter
(`"K d Q"`), so a code never merges with its neighbours into another token
and the levels never share a token (checked for every combination by the
tests). At most 26 codes per level, at most 3 levels.
"""

from __future__ import annotations

import numpy as np

ALPHABETS = (
    [chr(ord("A") + i) for i in range(26)],
    [" " + chr(ord("a") + i) for i in range(26)],
    [" " + chr(ord("A") + i) for i in range(26)],
)


def kmeans(
    x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding: (centroids [k, d], assignment [n])."""
    n = len(x)
    centroids = [x[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None, :] - np.array(centroids)[None]) ** 2).sum(-1), axis=1)
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centroids.append(x[rng.choice(n, p=p)])
    c = np.array(centroids, dtype=np.float64)
    assign = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        assign_new = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            members = x[assign_new == j]
            if len(members):
                c[j] = members.mean(0)
        if np.array_equal(assign_new, assign):
            break
        assign = assign_new
    return c, assign


def residual_codes(vectors: np.ndarray, sizes: list[int], seed: int = 0) -> np.ndarray:
    """Codes [n, levels] of residual k-means with `sizes[l]` centroids at level l."""
    if not 1 <= len(sizes) <= len(ALPHABETS) or not all(1 <= s <= 26 for s in sizes):
        raise ValueError(f"codes: 1-3 levels of 1-26 centroids each, got {sizes}")
    rng = np.random.default_rng(seed)
    residual = np.asarray(vectors, dtype=np.float64).copy()
    codes = np.zeros((len(residual), len(sizes)), dtype=np.int64)
    for level, k in enumerate(sizes):
        c, assign = kmeans(residual, min(k, len(residual)), rng)
        codes[:, level] = assign
        residual -= c[assign]
    return codes


def render(code: np.ndarray) -> str:
    """An item's codes as the behavioral view writes them, e.g. `K d Q`."""
    return "".join(ALPHABETS[level][int(c)] for level, c in enumerate(code))


def collisions(codes: np.ndarray) -> int:
    """Items whose codes another item has too (beyond the first of each group)."""
    return len(codes) - len({tuple(c) for c in codes.tolist()})
