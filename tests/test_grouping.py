"""Tests for edgekd.maths.grouping: affinities, class groups for specialists, recipe groups."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.maths.grouping import (
    captured_mass,
    confusion_affinity,
    covariance_affinity,
    find_groups,
    validate_groups,
)

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

# A realistic CIFAR-10 confusion matrix of an ~85% generalist, 1000 validation images per
# class: vehicles confuse vehicles (airplane-ship, automobile-truck), animals confuse
# animals, cat-dog is the strongest confusion, airplane-bird the main cross-over.
CIFAR10_CONFUSION = np.array(
    [
        [870, 10, 30, 8, 8, 3, 4, 5, 45, 17],
        [6, 930, 2, 3, 1, 1, 3, 1, 13, 40],
        [30, 2, 780, 40, 50, 35, 35, 18, 7, 3],
        [10, 5, 35, 690, 35, 140, 45, 25, 10, 5],
        [8, 2, 35, 30, 840, 25, 25, 30, 3, 2],
        [4, 2, 25, 110, 30, 790, 10, 25, 2, 2],
        [4, 3, 25, 30, 20, 8, 900, 4, 3, 3],
        [5, 2, 15, 20, 30, 35, 3, 880, 2, 8],
        [35, 15, 5, 5, 2, 2, 3, 2, 920, 11],
        [12, 45, 3, 4, 2, 2, 2, 4, 16, 910],
    ]
)


def block_confusion(
    blocks: list[list[int]],
    k: int,
    *,
    seed: int = 0,
    strength: float | list[float] = 30.0,
    noise: float = 3.0,
    correct: float = 900.0,
) -> np.ndarray:
    """Confusion counts with strong confusion inside each block and uniform noise elsewhere."""
    rng = np.random.default_rng(seed)
    strengths = [strength] * len(blocks) if np.isscalar(strength) else list(strength)
    c = rng.uniform(0.0, noise, size=(k, k))
    for block, s in zip(blocks, strengths, strict=True):
        idx = np.ix_(block, block)
        c[idx] = rng.uniform(0.7 * s, 1.3 * s, size=(len(block), len(block)))
    np.fill_diagonal(c, correct)
    return np.round(c)


TWO_BLOCKS = [[0, 1, 8, 9], [2, 3, 4, 5, 6, 7]]


# --- confusion_affinity ----------------------------------------------------------------


def test_confusion_affinity_hand_computed():
    c = np.array([[8, 2, 0], [1, 6, 3], [0, 0, 10]])
    a = confusion_affinity(c)
    # rates: row 0 /10, row 1 /10, row 2 /10
    expected = np.array([[0, 0.15, 0], [0.15, 0, 0.15], [0, 0.15, 0]])
    np.testing.assert_allclose(a, expected)
    assert a.dtype == np.float64


def test_confusion_affinity_properties_and_empty_class():
    c = block_confusion(TWO_BLOCKS, 10)
    c[3] = 0  # class 3 absent from the validation data
    a = confusion_affinity(c)
    assert a.shape == (10, 10)
    np.testing.assert_array_equal(a, a.T)
    assert np.all(a >= 0)
    np.testing.assert_array_equal(np.diag(a), 0.0)
    assert np.all(np.isfinite(a))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.ones((2, 3)), r"confusion: expected a square \(K, K\) matrix, got shape \(2, 3\)"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN or infinite"),
        (np.array([[1.0, -1.0], [0.0, 1.0]]), "non-negative"),
    ],
)
def test_confusion_affinity_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        confusion_affinity(bad)


# --- find_groups: block structures -----------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_groups", [2, "auto"])
def test_two_blocks_recovered(seed, n_groups):
    a = confusion_affinity(block_confusion(TWO_BLOCKS, 10, seed=seed))
    assert find_groups(a, n_groups) == TWO_BLOCKS


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_groups", [3, "auto"])
def test_three_unequal_blocks_recovered(seed, n_groups):
    blocks = [[0, 4, 10], [1, 7], [2, 3, 5, 6, 8, 9]]
    c = block_confusion(blocks, 11, seed=seed, strength=[35.0, 60.0, 15.0], noise=2.0)
    assert find_groups(confusion_affinity(c), n_groups) == blocks


def test_raw_counts_work_too():
    c = block_confusion(TWO_BLOCKS, 10)
    assert find_groups(c, "auto") == TWO_BLOCKS


@pytest.mark.parametrize("n_groups", [2, "auto"])
def test_unconfused_class_stays_out(n_groups):
    c = block_confusion([[0, 1, 2], [4, 5, 6, 7]], 8, noise=2.0)
    c[3, :] = 0
    c[:, 3] = 0
    c[3, 3] = 1000  # class 3: never wrong, never predicted for another class
    c[3, 5] = 1  # ... up to a single stray error
    groups = find_groups(confusion_affinity(c), n_groups)
    assert groups == [[0, 1, 2], [4, 5, 6, 7]]
    assert captured_mass(c, groups) > 0.9


def test_single_confused_pair_among_perfect_classes():
    c = np.diag(np.full(6, 100.0))
    c[2, 4] = c[4, 2] = 10
    assert find_groups(confusion_affinity(c), "auto") == [[2, 4]]
    assert find_groups(confusion_affinity(c), 1) == [[2, 4]]


def test_no_confusion_gives_no_groups():
    c = np.diag(np.full(5, 100.0))
    assert find_groups(confusion_affinity(c), "auto") == []
    assert find_groups(confusion_affinity(c), 2) == []


def test_uniform_confusion_is_one_group():
    a = np.ones((5, 5))
    np.fill_diagonal(a, 0)
    assert find_groups(a, "auto") == [[0, 1, 2, 3, 4]]


def test_disconnected_blocks_are_never_merged():
    a = np.zeros((4, 4))
    a[0, 1] = a[1, 0] = 1.0
    a[2, 3] = a[3, 2] = 1.0
    assert find_groups(a, "auto") == [[0, 1], [2, 3]]
    assert find_groups(a, 2) == [[0, 1], [2, 3]]
    # One group of 4 would join strangers; the coarsest partition with one group is used.
    assert find_groups(a, 1) == [[0, 1]]


def test_more_groups_than_the_structure_has():
    a = confusion_affinity(block_confusion(TWO_BLOCKS, 10, noise=0.0))
    # Noise-free blocks of uniform-ish strength split further; 5 groups of 2 is the limit.
    groups = find_groups(a, 5)
    assert all(len(g) >= 2 for g in groups)
    assert all(set(g) <= set(TWO_BLOCKS[0]) or set(g) <= set(TWO_BLOCKS[1]) for g in groups)


# --- find_groups: overlap, sizes, determinism ------------------------------------------


def bridged_affinity(seed: int = 0) -> np.ndarray:
    """Blocks {0..3} and {4..7}, plus class 8 confused with both about equally."""
    c = block_confusion([[0, 1, 2, 3], [4, 5, 6, 7]], 9, seed=seed, strength=40.0, noise=2.0)
    c[8, :8] = 25
    c[:8, 8] = 25
    c[8, 8] = 900
    c[8, 4] = 26  # slightly closer to the second block
    return confusion_affinity(c)


@pytest.mark.parametrize("seed", range(3))
def test_overlap_puts_bridging_class_in_both_groups(seed):
    a = bridged_affinity(seed)
    without = find_groups(a, 2)
    assert len(without) == 2
    assert sum(8 in g for g in without) == 1
    with_overlap = find_groups(a, 2, overlap=True)
    assert with_overlap == [[0, 1, 2, 3, 8], [4, 5, 6, 7, 8]]
    assert find_groups(a, "auto", overlap=True) == with_overlap


def test_overlap_leaves_well_separated_blocks_alone():
    a = confusion_affinity(block_confusion(TWO_BLOCKS, 10))
    assert find_groups(a, 2, overlap=True) == TWO_BLOCKS


def test_overlap_respects_max_group_size():
    a = bridged_affinity()
    groups = find_groups(a, 2, overlap=True, max_group_size=4)
    assert all(len(g) <= 4 for g in groups)


@pytest.mark.parametrize("max_size", [2, 3, 4, 5])
@pytest.mark.parametrize("n_groups", [2, "auto"])
def test_max_group_size_respected(max_size, n_groups):
    a = confusion_affinity(block_confusion(TWO_BLOCKS, 10))
    groups = find_groups(a, n_groups, max_group_size=max_size)
    assert groups
    assert all(2 <= len(g) <= max_size for g in groups)
    # Groups still never mix the two blocks.
    assert all(set(g) <= set(TWO_BLOCKS[0]) or set(g) <= set(TWO_BLOCKS[1]) for g in groups)


def test_min_group_size_drops_small_clusters():
    c = block_confusion([[0, 1], [2, 3, 4, 5]], 6, noise=1.0)
    a = confusion_affinity(c)
    assert find_groups(a, "auto") == [[0, 1], [2, 3, 4, 5]]
    assert find_groups(a, "auto", min_group_size=3) == [[2, 3, 4, 5]]


def test_deterministic_and_sorted():
    a = confusion_affinity(CIFAR10_CONFUSION)
    first = find_groups(a, "auto", overlap=True)
    for _ in range(3):
        assert find_groups(a.copy(), "auto", overlap=True) == first
    assert all(g == sorted(g) for g in first)
    assert first == sorted(first)
    assert all(isinstance(i, int) for g in first for i in g)


def test_ties_are_broken_by_class_index():
    a = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # 0-1 and 1-2 tie
    assert find_groups(a, "auto") == [[0, 1, 2]]
    assert find_groups(a, "auto", max_group_size=2) == [[0, 1]]
    a = np.ones((4, 4))
    np.fill_diagonal(a, 0)
    assert find_groups(a, 1) == [[0, 1, 2, 3]]
    assert find_groups(a, "auto", max_group_size=2) == [[0, 1], [2, 3]]


@pytest.mark.parametrize("seed", range(3))
def test_relabelling_classes_relabels_groups(seed):
    a = confusion_affinity(block_confusion(TWO_BLOCKS, 10, seed=seed))
    perm = np.random.default_rng(seed).permutation(10)  # new class i is old class perm[i]
    groups = find_groups(a[np.ix_(perm, perm)], "auto")
    assert sorted(sorted(int(perm[i]) for i in g) for g in groups) == TWO_BLOCKS


def test_asymmetric_input_is_symmetrised():
    a = confusion_affinity(block_confusion(TWO_BLOCKS, 10))
    upper = np.triu(a) * 2
    assert find_groups(upper, "auto") == find_groups(a, "auto")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_groups": 0}, r"n_groups: expected an int from 1 to 5 \(10 classes"),
        ({"n_groups": 6}, r"n_groups: expected an int from 1 to 5 .* got 6"),
        ({"n_groups": "many"}, r"n_groups: expected an int >= 1 or 'auto', got 'many'"),
        ({"n_groups": 2.0}, r"n_groups: expected an int >= 1 or 'auto', got 2.0"),
        ({"n_groups": True}, r"n_groups: expected an int >= 1 or 'auto', got True"),
        ({"min_group_size": 1}, r"min_group_size: expected an int >= 2"),
        ({"max_group_size": 1}, r"max_group_size: expected None or an int >= min_group_size"),
        ({"min_affinity": 1.0}, r"min_affinity: expected a float in \[0, 1\)"),
        ({"overlap_ratio": 0.0}, r"overlap_ratio: expected a float > 0"),
    ],
)
def test_find_groups_rejects_bad_arguments(kwargs, match):
    a = confusion_affinity(block_confusion(TWO_BLOCKS, 10))
    with pytest.raises(ValueError, match=match):
        find_groups(a, **kwargs)


def test_find_groups_rejects_negative_affinity():
    a = np.array([[0.0, -0.5], [-0.5, 0.0]])
    with pytest.raises(ValueError, match="use covariance_affinity"):
        find_groups(a)


# --- CIFAR-10-like ---------------------------------------------------------------------


def test_cifar10_like_groups_are_sensible():
    a = confusion_affinity(CIFAR10_CONFUSION)
    name = CIFAR10_CLASSES.index
    vehicles = {name(c) for c in ("airplane", "automobile", "ship", "truck")}
    animals = set(range(10)) - vehicles
    assert find_groups(a, 2) == [sorted(vehicles), sorted(animals)]
    assert find_groups(a, "auto") == [sorted(vehicles), sorted(animals)]
    for n_groups in ("auto", 2, 3, 4):
        groups = find_groups(a, n_groups)
        assert any({name("cat"), name("dog")} <= set(g) for g in groups)
        assert all(set(g) <= vehicles or set(g) <= animals for g in groups), groups
        # With overlap, the only crossing allowed is the real airplane-bird confusion.
        for g in find_groups(a, n_groups, overlap=True):
            assert set(g) <= vehicles | {name("bird")} or set(g) <= animals | {name("airplane")}
    assert captured_mass(CIFAR10_CONFUSION, find_groups(a, "auto")) > 0.8


def test_cifar10_like_small_specialists():
    a = confusion_affinity(CIFAR10_CONFUSION)
    groups = find_groups(a, "auto", max_group_size=3)
    pairs = {(0, 8), (1, 9)}  # airplane-ship, automobile-truck
    assert pairs <= {tuple(g) for g in groups}
    assert any({3, 5} <= set(g) for g in groups)  # cat-dog


# --- captured_mass ---------------------------------------------------------------------


def test_captured_mass_hand_computed():
    c = np.array([[10, 2, 1], [3, 8, 0], [4, 1, 5]])
    # off-diagonal total 11; inside {0, 1}: 2 + 3
    assert captured_mass(c, [[0, 1]]) == pytest.approx(5 / 11)
    assert captured_mass(c, [[1, 2]]) == pytest.approx(1 / 11)
    assert captured_mass(c, []) == 0.0
    assert captured_mass(c, [[0, 1, 2]]) == pytest.approx(1.0)
    # Overlapping groups count each pair once.
    assert captured_mass(c, [[0, 1], [1, 0], [0, 2]]) == pytest.approx(10 / 11)


def test_captured_mass_is_one_for_perfect_blocks():
    c = np.zeros((6, 6))
    for block in ([0, 3], [1, 2, 5]):
        c[np.ix_(block, block)] = 7.0
    c[4, 4] = 9.0
    assert captured_mass(c, [[0, 3], [1, 2, 5]]) == pytest.approx(1.0)
    assert captured_mass(confusion_affinity(c), find_groups(c)) == pytest.approx(1.0)
    assert captured_mass(c, [[0, 3]]) == pytest.approx(2 / 8)


def test_captured_mass_without_confusion_is_zero():
    assert captured_mass(np.eye(3), [[0, 1]]) == 0.0


@pytest.mark.parametrize(
    "groups, match",
    [
        ([[0, 3]], r"groups\[0\]\[1\]: expected a class index from 0 to 2, got 3"),
        ([[0, 1], [-1, 2]], r"groups\[1\]\[0\]: expected a class index from 0 to 2, got -1"),
        ([[0, "a"]], r"groups\[0\]\[1\]: expected a class index from 0 to 2, got 'a'"),
    ],
)
def test_captured_mass_rejects_bad_groups(groups, match):
    with pytest.raises(ValueError, match=match):
        captured_mass(np.ones((3, 3)), groups)


# --- covariance_affinity ---------------------------------------------------------------


def synthetic_probs(groups: list[list[int]], k: int, n: int = 3000, seed: int = 0) -> np.ndarray:
    """Softmax outputs where the classes of a group get probability together."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=n)
    group_of = np.full(k, -1)
    for g, members in enumerate(groups):
        group_of[members] = g
    same = (group_of[labels][:, None] == group_of[None, :]) & (group_of[None, :] >= 0)
    logits = 4.0 * np.eye(k)[labels] + 2.0 * same + rng.normal(0.0, 1.0, size=(n, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("correlation", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_covariance_affinity_recovers_groups(correlation, seed):
    groups = [[0, 2, 4], [1, 3, 5, 6]]
    probs = synthetic_probs(groups, 7, seed=seed)
    a = covariance_affinity(probs, correlation=correlation)
    assert a.shape == (7, 7)
    np.testing.assert_array_equal(a, a.T)
    assert np.all(a >= 0)
    np.testing.assert_array_equal(np.diag(a), 0.0)
    assert find_groups(a, "auto") == groups
    assert find_groups(a, 2) == groups


def test_covariance_affinity_leaves_independent_class_out():
    # Class 6 is never grouped with anything: its probability moves against all others.
    probs = synthetic_probs([[0, 2, 4], [1, 3, 5]], 7, seed=1)
    a = covariance_affinity(probs)
    assert np.all(a[6] == 0.0)
    assert find_groups(a, "auto") == [[0, 2, 4], [1, 3, 5]]


def test_covariance_affinity_matches_numpy():
    probs = synthetic_probs([[0, 1], [2, 3]], 4)
    logits = np.log(probs)
    clr = logits - logits.mean(axis=1, keepdims=True)
    for log_ratio, x in ((True, clr), (False, probs)):
        corr = np.clip(np.corrcoef(x.T), 0, None)
        np.fill_diagonal(corr, 0)
        a = covariance_affinity(probs, log_ratio=log_ratio)
        np.testing.assert_allclose(a, corr, atol=1e-12)
        assert a.max() <= 1.0
        cov = np.clip(np.cov(x.T), 0, None)
        np.fill_diagonal(cov, 0)
        raw = covariance_affinity(probs, log_ratio=log_ratio, correlation=False)
        np.testing.assert_allclose(raw, cov, atol=1e-12)


def test_covariance_affinity_confident_ten_class_generalist():
    # A 99%-accurate 10-class generalist: vehicles {0, 1, 8, 9} vs animals, cat (3) and
    # dog (5) often mixed up. Raw probabilities covary negatively for every pair (the
    # sum-to-one bias), so Hinton et al.'s raw covariance finds nothing; log-ratios do.
    rng = np.random.default_rng(0)
    n, k = 5000, 10
    vehicle = np.isin(np.arange(k), [0, 1, 8, 9])
    labels = rng.integers(0, k, size=n)
    logits = 8.0 * np.eye(k)[labels] + 3.0 * (vehicle[labels][:, None] == vehicle[None, :])
    logits += rng.normal(0.0, 1.5, size=(n, k))
    logits[:, 5] += 4.0 * (labels == 3)
    logits[:, 3] += 4.0 * (labels == 5)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    assert np.all(covariance_affinity(probs, log_ratio=False) == 0.0)
    a = covariance_affinity(probs)
    assert find_groups(a, "auto") == TWO_BLOCKS
    assert find_groups(a, 2) == TWO_BLOCKS
    assert a[3, 5] == a.max()  # cat-dog is the strongest pair
    assert [3, 5] in find_groups(a, "auto", max_group_size=2)


def test_covariance_affinity_constant_class_has_zero_affinity():
    probs = synthetic_probs([[0, 1]], 3) * np.array([1.0, 1.0, 0.0])
    a = covariance_affinity(probs)
    assert np.all(a[2] == 0) and np.all(a[:, 2] == 0)
    assert np.all(np.isfinite(a))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.ones(5), r"probs: expected an \(N, K\) array .* got shape \(5,\)"),
        (np.ones((1, 3)), r"got shape \(1, 3\)"),
        (np.array([[0.5, np.inf], [0.5, 0.5]]), "NaN or infinite"),
        (np.array([[2.0, -1.0], [0.5, 0.5]]), r"probabilities >= 0, got a minimum of -1 \(pass"),
    ],
)
def test_covariance_affinity_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        covariance_affinity(bad)


# --- validate_groups -------------------------------------------------------------------


def test_validate_groups_maps_names_to_indices():
    groups = [["dog", "cat", "deer"], ["truck", "automobile"], ["cat", "frog"]]
    assert validate_groups(groups, CIFAR10_CLASSES) == [[3, 4, 5], [1, 9], [3, 6]]
    assert validate_groups([], CIFAR10_CLASSES) == []
    assert validate_groups((("ship", "airplane"),), tuple(CIFAR10_CLASSES)) == [[0, 8]]


@pytest.mark.parametrize(
    "groups, message",
    [
        (
            [["cat", "dog"], ["ship", "airplane", "trukc"]],
            "groups[1][2]: unknown class 'trukc'; did you mean 'truck'?",
        ),
        (
            [["Cat", "dog"]],
            "groups[0][0]: unknown class 'Cat'; did you mean 'cat'?",
        ),
        (
            [["cat", "zebra"]],
            "groups[0][1]: unknown class 'zebra'; known classes: ['airplane', 'automobile', "
            "'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'].",
        ),
        ([["cat", "dog", "cat"]], "groups[0]: class 'cat' listed twice"),
        (
            [["cat", "dog"], ["frog"]],
            "groups[1]: a group needs at least 2 classes, got 1 (['frog'])",
        ),
        ([[]], "groups[0]: a group needs at least 2 classes, got 0 ([])"),
        ([["cat", "dog"], ["dog", "cat"]], "groups[1]: same classes as groups[0]"),
        ([["cat", "dog"], "ship"], "groups[1]: expected a list of class names, got str 'ship'."),
        ([["cat", 5]], "groups[0][1]: expected a class name (string), got int 5."),
        ("cat", "groups: expected a list of groups of class names, got 'cat'."),
    ],
)
def test_validate_groups_errors(groups, message):
    with pytest.raises(ValueError) as info:
        validate_groups(groups, CIFAR10_CLASSES)
    assert str(info.value) == message
