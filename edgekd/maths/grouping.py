"""Data-driven specialist assignment: group the classes a generalist confuses.

Each group of mutually confused classes becomes one specialist model. Two signals give a
symmetric class-by-class affinity matrix:

- `confusion_affinity`: the generalist's confusion matrix on validation data (needs labels).
- `covariance_affinity`: the covariance of its predicted probability vectors, as in Hinton,
  Vinyals and Dean (2015), "Distilling the knowledge in a neural network" (needs no labels):
  classes that tend to be predicted together.

`find_groups` clusters an affinity matrix into groups (optionally overlapping, as Hinton et
al.'s specialists do), `captured_mass` says how much of the confusion the groups cover, and
`validate_groups` checks groups written by hand in a recipe. Everything here is pure numpy
and deterministic.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np

__all__ = [
    "captured_mass",
    "confusion_affinity",
    "covariance_affinity",
    "find_groups",
    "validate_groups",
]

_PROB_FLOOR = 1e-7  # probabilities below this count as this in the log-ratio transform


def confusion_affinity(confusion: np.ndarray) -> np.ndarray:
    """Symmetric class affinity from a confusion matrix.

    Rows are normalised by the number of samples of each true class, so
    `R[i, j]` is the fraction of class-`i` samples predicted as `j` (an error rate, not a
    share of the errors: a class that is almost always right keeps small entries). The
    diagonal (correct predictions) is removed and the result symmetrised:
    `A = (R + R.T) / 2`. A class with no samples gets a zero row in `R`.

    Args:
        confusion: array of shape `(K, K)`. Counts (or rates), `confusion[i, j]` = samples
            of true class `i` predicted as class `j`. Non-negative and finite.

    Returns:
        Array of shape `(K, K)`, float64, symmetric, non-negative, zero diagonal.
    """
    c = _square_matrix(confusion, "confusion")
    totals = c.sum(axis=1, keepdims=True)
    rates = np.divide(c, totals, out=np.zeros_like(c), where=totals > 0)
    np.fill_diagonal(rates, 0.0)
    return (rates + rates.T) / 2.0


def covariance_affinity(
    probs: np.ndarray, *, log_ratio: bool = True, correlation: bool = True
) -> np.ndarray:
    """Class affinity from the covariance of predicted probability vectors (Hinton et al.).

    Classes that the generalist tends to predict together (both get probability on the
    same inputs) covary positively; classes it keeps apart covary negatively, so only the
    positive part is kept. No labels are needed.

    Probabilities sum to one, which biases their covariances negative (each class's
    off-diagonal covariances sum to minus its variance). With few classes and a confident
    model this bias wins: on 10 classes every pair of raw softmax outputs typically has a
    negative covariance, and the positive part is all zeros. Hinton et al. had 15,000
    classes, where the bias is negligible. So by default the probabilities first go
    through the centred log-ratio transform of compositional data analysis (Aitchison),
    `clr(p)_j = log p_j - mean_k log p_k` (probabilities floored at 1e-7, about float32
    precision), which removes the sum-to-one constraint. For softmax outputs this equals
    the logits centred per input, so classes whose logits rise and fall together covary.
    `log_ratio=False` gives Hinton et al.'s covariance of the raw probabilities.

    By default the covariance is divided by the product of the two standard deviations,
    i.e. the positive part of the Pearson correlation, in `[0, 1]`: without this, classes
    that are predicted often (large variance) would dominate the affinity of rare ones.
    Classes whose value never varies get zero affinity.

    Args:
        probs: array of shape `(N, K)`. Predicted class probabilities (softmax outputs) for
            `N >= 2` inputs, finite.
        log_ratio: bool. Apply the centred log-ratio transform first. Defaults to True.
        correlation: bool. Normalise the covariance to a correlation. Defaults to True.

    Returns:
        Array of shape `(K, K)`, float64, symmetric, non-negative, zero diagonal.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 2 or p.shape[1] < 2:
        raise ValueError(
            f"probs: expected an (N, K) array of predicted probabilities with N >= 2 inputs "
            f"and K >= 2 classes, got shape {p.shape}."
        )
    if not np.all(np.isfinite(p)):
        raise ValueError("probs: contains NaN or infinite values; pass softmax probabilities.")
    if log_ratio:
        if np.any(p < 0):
            raise ValueError(
                f"probs: expected probabilities >= 0, got a minimum of {p.min():g} (pass "
                f"softmax outputs, not logits)."
            )
        p = np.log(np.maximum(p, _PROB_FLOOR))
        p = p - p.mean(axis=1, keepdims=True)
    centred = p - p.mean(axis=0)
    cov = centred.T @ centred / (p.shape[0] - 1)
    if correlation:
        std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        scale = np.outer(std, std)
        cov = np.divide(cov, scale, out=np.zeros_like(cov), where=scale > 0)
    affinity = np.clip(cov, 0.0, None)
    affinity = (affinity + affinity.T) / 2.0
    np.fill_diagonal(affinity, 0.0)
    return affinity


def find_groups(
    affinity: np.ndarray,
    n_groups: int | str = "auto",
    *,
    overlap: bool = False,
    max_group_size: int | None = None,
    min_group_size: int = 2,
    min_affinity: float = 0.1,
    overlap_ratio: float = 0.5,
) -> list[list[int]]:
    """Cluster classes into groups of mutually confused classes, one per specialist.

    The affinity is symmetrised and its diagonal ignored. The steps, all deterministic
    (ties go to the lowest class index):

    1. Unconfused classes are left out of every group: a class whose strongest affinity to
       any other class is below `min_affinity` times the largest affinity in the matrix
       (or is zero) needs no specialist.
    2. The other classes are clustered by average-linkage agglomeration: starting from
       singletons, the two clusters with the highest mean pairwise affinity are merged,
       never making a cluster larger than `max_group_size` and never joining clusters with
       zero affinity between them. Every step of this hierarchy is a candidate partition.
    3. The candidate with the highest weighted Newman modularity is chosen,
       `Q = sum_c [W_cc / W - (S_c / W) ** 2]` (`W_cc`: affinity inside cluster `c`
       counting both directions, `S_c`: total affinity of its classes, `W`: total affinity
       of the classes kept in step 1; coarsest candidate on ties). With `"auto"` all
       candidates compete; with an int `n_groups`, only those with exactly `n_groups`
       clusters of at least `min_group_size` classes (or, if there are none, those closest
       to it). Scoring by modularity keeps a class that `max_group_size` shut out of its
       own block from being pushed into an unrelated one.
    4. Clusters smaller than `min_group_size` are dropped: their classes get no specialist.
    5. With `overlap=True`, a class may also join other groups (as Hinton et al.'s
       specialists overlap): a class of group `G` joins another group `H` when its mean
       affinity to the classes of `H` is positive and at least `overlap_ratio` times its
       mean affinity to the other classes of `G`. Means, not totals, so that a large group
       does not collect every class through many small, noisy affinities. Decisions use
       the groups of step 4; when `max_group_size` would be exceeded, the strongest
       candidates (largest ratio) win.

    Args:
        affinity: array of shape `(K, K)`, non-negative and finite, e.g. from
            `confusion_affinity` or `covariance_affinity`. A raw confusion matrix also
            works (symmetrised), but `confusion_affinity` normalises per class.
        n_groups: int >= 1 or `"auto"`. Number of groups wanted; the unconfused classes of
            step 1 are not counted. Fewer may come back when the structure has fewer.
            Defaults to `"auto"`.
        overlap: bool. Let a class belong to several groups (step 5). Defaults to False.
        max_group_size: int or None. Largest group allowed, overlap included. Defaults to
            None (no limit).
        min_group_size: int >= 2. Smallest group kept. Defaults to 2.
        min_affinity: float in [0, 1). Relative threshold of step 1. Defaults to 0.1.
        overlap_ratio: float > 0. Threshold of step 5. Defaults to 0.5.

    Returns:
        Groups of class indices, each sorted, sorted by their first class. May be empty.

    Example:
        >>> a = confusion_affinity(cifar10_confusion)  # of a CIFAR-10 generalist
        >>> find_groups(a, "auto")  # vehicles, animals
        [[0, 1, 8, 9], [2, 3, 4, 5, 6, 7]]
    """
    a = _square_matrix(affinity, "affinity")
    a = (a + a.T) / 2.0
    np.fill_diagonal(a, 0.0)
    k = a.shape[0]
    if isinstance(min_group_size, bool) or not isinstance(min_group_size, (int, np.integer)):
        raise ValueError(f"min_group_size: expected an int >= 2, got {min_group_size!r}.")
    if min_group_size < 2:
        raise ValueError(
            f"min_group_size: expected an int >= 2 (a specialist needs at least 2 classes), "
            f"got {min_group_size}."
        )
    if max_group_size is not None and (
        isinstance(max_group_size, bool)
        or not isinstance(max_group_size, (int, np.integer))
        or max_group_size < min_group_size
    ):
        raise ValueError(
            f"max_group_size: expected None or an int >= min_group_size ({min_group_size}), "
            f"got {max_group_size!r}."
        )
    if isinstance(n_groups, str):
        if n_groups != "auto":
            raise ValueError(f"n_groups: expected an int >= 1 or 'auto', got {n_groups!r}.")
    elif isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)):
        raise ValueError(f"n_groups: expected an int >= 1 or 'auto', got {n_groups!r}.")
    elif n_groups < 1 or n_groups * min_group_size > k:
        raise ValueError(
            f"n_groups: expected an int from 1 to {k // min_group_size} ({k} classes, groups "
            f"of at least {min_group_size}), got {n_groups}."
        )
    if not 0.0 <= min_affinity < 1.0:
        raise ValueError(f"min_affinity: expected a float in [0, 1), got {min_affinity!r}.")
    if not overlap_ratio > 0.0:
        raise ValueError(f"overlap_ratio: expected a float > 0, got {overlap_ratio!r}.")

    active = _confused_classes(a, min_affinity)
    if active.size < min_group_size:
        return []
    sub = a[np.ix_(active, active)]
    levels = _average_linkage(sub, max_group_size)[::-1]  # coarsest first
    scores = np.array([_modularity(sub, labels) for labels in levels])
    if n_groups != "auto":
        counts = np.array([_count_groups(labels, min_group_size) for labels in levels])
        miss = np.abs(counts - int(n_groups))
        scores = np.where(miss == miss.min(), scores, -np.inf)
    best = int(np.argmax(scores))  # first maximum: the coarsest
    labels = levels[best]
    groups = []
    for label in np.unique(labels):
        members = active[labels == label]
        if members.size >= min_group_size:
            groups.append(sorted(int(i) for i in members))
    if overlap:
        groups = _add_overlap(a, groups, max_group_size, overlap_ratio)
    return sorted(groups)


def captured_mass(confusion_or_affinity: np.ndarray, groups: Sequence[Sequence[int]]) -> float:
    """Share of the off-diagonal confusion (or affinity) that falls inside the groups.

    An off-diagonal entry `(i, j)` is captured when classes `i` and `j` share at least one
    group (counted once even if groups overlap), i.e. when some specialist sees both.

    Args:
        confusion_or_affinity: array of shape `(K, K)`, non-negative and finite: a confusion
            matrix (counts or rates, need not be symmetric) or an affinity matrix.
        groups: sequence of groups of class indices in `[0, K)`.

    Returns:
        Float in `[0, 1]`: captured off-diagonal mass / total off-diagonal mass; 0.0 when
        there is no off-diagonal mass at all.
    """
    m = _square_matrix(confusion_or_affinity, "confusion_or_affinity")
    k = m.shape[0]
    inside = np.zeros((k, k), dtype=bool)
    for g, group in enumerate(groups):
        idx = []
        for p, cls in enumerate(group):
            if (
                isinstance(cls, bool)
                or not isinstance(cls, (int, np.integer))
                or not (0 <= cls < k)
            ):
                raise ValueError(
                    f"groups[{g}][{p}]: expected a class index from 0 to {k - 1}, got {cls!r}."
                )
            idx.append(int(cls))
        inside[np.ix_(idx, idx)] = True
    off = ~np.eye(k, dtype=bool)
    total = float(m[off].sum())
    if total <= 0.0:
        return 0.0
    return float(m[inside & off].sum()) / total


def validate_groups(groups: Sequence[Sequence[str]], class_names: Sequence[str]) -> list[list[int]]:
    """Turn groups of class names (e.g. from a recipe) into groups of class indices.

    The same class may appear in several groups (overlapping specialists, as in Hinton et
    al.); within one group each class must appear once, and each group needs at least 2
    classes. Two groups with exactly the same classes are rejected (two identical
    specialists). The order of the groups is kept (so `groups[i]` still names the i-th
    specialist); the indices inside each group are sorted.

    Args:
        groups: sequence of groups, each a sequence of class names.
        class_names: sequence of the K class names; a name's position is its index.

    Returns:
        List of groups of class indices, one per input group, in the same order.

    Raises:
        ValueError: naming the culprit and its position, e.g.
            `groups[1][2]: unknown class 'trukc'; did you mean 'truck'?`.
    """
    names = [str(n) for n in class_names]
    index = {name: i for i, name in enumerate(names)}
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise ValueError(f"groups: expected a list of groups of class names, got {groups!r}.")
    result: list[list[int]] = []
    seen: dict[tuple[int, ...], int] = {}
    for g, group in enumerate(groups):
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence):
            raise ValueError(
                f"groups[{g}]: expected a list of class names, got {type(group).__name__} "
                f"{group!r}."
            )
        idx: list[int] = []
        for p, name in enumerate(group):
            if not isinstance(name, str):
                raise ValueError(
                    f"groups[{g}][{p}]: expected a class name (string), got "
                    f"{type(name).__name__} {name!r}."
                )
            if name not in index:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known classes: {names}."
                raise ValueError(f"groups[{g}][{p}]: unknown class {name!r}; {hint}")
            if index[name] in idx:
                raise ValueError(f"groups[{g}]: class {name!r} listed twice")
            idx.append(index[name])
        if len(idx) < 2:
            raise ValueError(
                f"groups[{g}]: a group needs at least 2 classes, got {len(idx)} ({list(group)})"
            )
        key = tuple(sorted(idx))
        if key in seen:
            raise ValueError(f"groups[{g}]: same classes as groups[{seen[key]}]")
        seen[key] = g
        result.append(list(key))
    return result


def _square_matrix(x: np.ndarray, name: str) -> np.ndarray:
    """Return `x` as a float64 (K, K) copy, checking it is square, finite and non-negative."""
    m = np.array(x, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"{name}: expected a square (K, K) matrix, got shape {m.shape}.")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name}: contains NaN or infinite values.")
    if np.any(m < 0):
        raise ValueError(
            f"{name}: expected non-negative values, got a minimum of {m.min():g} (for a "
            f"covariance, use covariance_affinity, which keeps its positive part)."
        )
    return m


def _confused_classes(a: np.ndarray, min_affinity: float) -> np.ndarray:
    """Indices of the classes whose strongest affinity reaches `min_affinity` * max(a)."""
    top = a.max(axis=1)
    peak = float(top.max()) if top.size else 0.0
    if peak <= 0.0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero((top > 0.0) & (top >= min_affinity * peak))


def _average_linkage(a: np.ndarray, max_size: int | None) -> list[np.ndarray]:
    """Partitions (cluster labels per class) of an average-linkage hierarchy, finest first.

    A merge joins the pair of clusters with the highest mean pairwise affinity (lowest
    indices on ties). Merges past `max_size` classes or between clusters with zero affinity
    are not made, so the coarsest partition may have several clusters.
    """
    k = a.shape[0]
    limit = k if max_size is None else int(max_size)
    between = a.copy()  # total affinity between cluster slots (slot = its smallest member)
    sizes = np.ones(k, dtype=np.int64)
    alive = np.ones(k, dtype=bool)
    labels = np.arange(k)
    levels = [labels.copy()]
    for _ in range(k - 1):
        allowed = np.outer(alive, alive) & (sizes[:, None] + sizes[None, :] <= limit)
        np.fill_diagonal(allowed, False)
        mean = np.where(allowed, between / np.outer(sizes, sizes), -1.0)
        i, j = divmod(int(np.argmax(mean)), k)
        if mean[i, j] <= 0.0:
            break
        keep, drop = min(i, j), max(i, j)
        between[keep, :] += between[drop, :]
        between[:, keep] += between[:, drop]
        between[drop, :] = 0.0
        between[:, drop] = 0.0
        between[keep, keep] = 0.0
        sizes[keep] += sizes[drop]
        alive[drop] = False
        labels[labels == drop] = keep
        levels.append(labels.copy())
    return levels


def _modularity(a: np.ndarray, labels: np.ndarray) -> float:
    """Weighted Newman modularity of the partition `labels` of the graph `a`."""
    total = float(a.sum())
    if total <= 0.0:
        return 0.0
    _, clusters = np.unique(labels, return_inverse=True)
    onehot = np.eye(int(clusters.max()) + 1)[clusters]
    inside = np.trace(onehot.T @ a @ onehot) / total
    strength = onehot.T @ a.sum(axis=1) / total
    return float(inside - np.sum(strength**2))


def _count_groups(labels: np.ndarray, min_size: int) -> int:
    """Number of clusters in `labels` with at least `min_size` members."""
    _, counts = np.unique(labels, return_counts=True)
    return int(np.sum(counts >= min_size))


def _add_overlap(
    a: np.ndarray, groups: list[list[int]], max_size: int | None, ratio: float
) -> list[list[int]]:
    """Add to each group the classes of other groups that are strongly tied to it."""
    home = {c: g for g, group in enumerate(groups) for c in group}
    # Mean affinity to the other members of the home group (a[c, c] is 0).
    own = {c: float(a[c, groups[home[c]]].sum()) / (len(groups[home[c]]) - 1) for c in home}
    extended = []
    for g, group in enumerate(groups):
        candidates = []
        for c in sorted(home):
            if home[c] == g:
                continue
            tie = float(a[c, group].mean())
            if tie > 0.0 and tie >= ratio * own[c]:
                strength = tie / own[c] if own[c] > 0.0 else np.inf
                candidates.append((-strength, c))
        room = len(candidates) if max_size is None else max(0, max_size - len(group))
        extra = [c for _, c in sorted(candidates)[:room]]
        extended.append(sorted(group + extra))
    return extended
