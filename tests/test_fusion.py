"""Fusion: `fuse` reaches the optimum a brute-force optimiser finds, never lets the
objective rise, and stays on the simplex with extreme inputs. Closed-form cases check
the objective itself, and one test runs under the JAX backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from scipy.optimize import minimize

from edgekd.training.ensemble.fusion import (
    fuse,
    fusion_objective,
    membership_matrix,
    scatter_specialist,
)
from tests.conftest import REPO

# ---------------------------------------------------------------------------------------
# Reference side: float64 numpy and scipy, one image at a time.


def ref_objective(q, g, pin, d, a, mem, dustbin):
    """KL(p_g || q) + sum_{m active} KL(p_m || A_m q) for one image, float64, with grad."""
    q = np.asarray(q, np.float64)
    tiny = 1e-300

    def xlogy(x, y):
        return np.where(x > 0, x * np.log(np.maximum(y, tiny)), 0.0)

    f = np.sum(xlogy(g, g) - xlogy(g, q))
    grad = -np.where(g > 0, g / np.maximum(q, tiny), 0.0)
    for m in np.flatnonzero(a > 0):
        inside = mem[m] > 0
        p = np.where(inside, pin[m], 0.0)
        f += np.sum(xlogy(p, p) - xlogy(p, q))
        grad -= np.where(p > 0, p / np.maximum(q, tiny), 0.0)
        if dustbin:
            rest = q[~inside].sum()
            f += xlogy(d[m], d[m]) - xlogy(d[m], rest)
            grad -= np.where(~inside, d[m] / max(rest, tiny), 0.0)
        else:
            mass = q[inside].sum()
            f += p.sum() * np.log(max(mass, tiny))
            grad += np.where(inside, p.sum() / max(mass, tiny), 0.0)
    return f, grad


def brute_force(g, pin, d, a, mem, dustbin, restarts=4, seed=0):
    """Minimise the objective over softmax logits with BFGS (exact gradient), restarted."""
    rng = np.random.default_rng(seed)
    k = g.shape[0]

    def fun(z):
        q = np.exp(z - z.max())
        q /= q.sum()
        f, dq = ref_objective(q, g, pin, d, a, mem, dustbin)
        return f, q * (dq - np.dot(q, dq))

    best = None
    for r in range(restarts):
        z0 = np.log(np.maximum(g, 1e-12)) if r == 0 else rng.normal(size=k)
        res = minimize(fun, z0, jac=True, method="BFGS", options={"gtol": 1e-13, "maxiter": 5000})
        if best is None or res.fun < best.fun:
            best = res
    q = np.exp(best.x - best.x.max())
    return q / q.sum(), best.fun


def random_case(rng, dustbin, rows, k=None, m=None, alpha=None):
    """A random problem: groups (some overlapping), Dirichlet outputs, random activity."""
    k = int(rng.integers(3, 9)) if k is None else k
    m = int(rng.integers(1, 4)) if m is None else m
    groups = [sorted(rng.choice(k, int(rng.integers(1, k)), replace=False)) for _ in range(m)]
    mem = membership_matrix(groups, k)
    alpha = float(rng.choice([0.3, 1.0, 3.0])) if alpha is None else alpha
    g = rng.dirichlet(np.full(k, alpha), size=rows)
    pin = np.zeros((rows, m, k))
    d = np.zeros((rows, m))
    for j, group in enumerate(groups):
        p = rng.dirichlet(np.full(len(group) + int(dustbin), alpha), size=rows)
        pin[:, j, group] = p[:, : len(group)]
        if dustbin:
            d[:, j] = p[:, -1]
    a = (rng.random((rows, m)) < 0.7).astype(np.float64)
    a[:, 0] = 1.0  # at least one specialist counts in every row
    return g, pin, d, a, mem


def run_fuse(g, pin, d, a, mem, **kwargs):
    args = [np.asarray(x, np.float32) for x in (g, pin, d, a, mem)]
    return keras.ops.convert_to_numpy(fuse(*args, **kwargs)).astype(np.float64)


def assert_on_simplex(q, atol=1e-6):
    assert np.all(np.isfinite(q))
    assert np.all(q >= 0)
    np.testing.assert_allclose(q.sum(-1), 1.0, atol=atol)


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dustbin", [True, False], ids=["dustbin", "no-dustbin"])
def test_matches_brute_force(dustbin):
    rng = np.random.default_rng(1234 + dustbin)
    checked = 0
    for _ in range(10):
        g, pin, d, a, mem = random_case(rng, dustbin, rows=3)
        q = run_fuse(g, pin, d, a, mem, dustbin=dustbin)
        assert_on_simplex(q)
        for b in range(g.shape[0]):
            q_ref, f_ref = brute_force(g[b], pin[b], d[b], a[b], mem, dustbin)
            f_q, _ = ref_objective(q[b] / q[b].sum(), g[b], pin[b], d[b], a[b], mem, dustbin)
            assert f_q <= f_ref + 1e-6
            np.testing.assert_allclose(q[b], q_ref, atol=1e-4)
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize("dustbin", [True, False], ids=["dustbin", "no-dustbin"])
def test_objective_never_increases(dustbin):
    rng = np.random.default_rng(7)
    g, pin, d, a, mem = random_case(rng, dustbin, rows=16, k=6, m=3, alpha=0.5)
    values = []
    for n in range(0, 31):
        q = run_fuse(g, pin, d, a, mem, dustbin=dustbin, iterations=n)
        q /= q.sum(-1, keepdims=True)  # float32 rounding of the sum must not count as progress
        values.append(
            [ref_objective(q[b], g[b], pin[b], d[b], a[b], mem, dustbin)[0] for b in range(16)]
        )
    values = np.asarray(values)
    assert np.all(np.diff(values, axis=0) <= 1e-7 * (1.0 + np.abs(values[:-1])))
    best = [brute_force(g[b], pin[b], d[b], a[b], mem, dustbin)[1] for b in range(16)]
    np.testing.assert_allclose(values[-1], best, atol=1e-6)


def test_no_active_specialist_returns_general_exactly():
    rng = np.random.default_rng(3)
    for dustbin in (True, False):
        g, pin, d, a, mem = random_case(rng, dustbin, rows=5, k=5, m=2)
        a[:] = 0.0
        a[2, 1] = 1.0  # one row does fuse
        q = run_fuse(g, pin, d, a, mem, dustbin=dustbin)
        g32 = g.astype(np.float32).astype(np.float64)
        np.testing.assert_array_equal(q[[0, 1, 3, 4]], g32[[0, 1, 3, 4]])
        assert np.abs(q[2] - g32[2]).max() > 1e-4
    # bool activity works too
    q = run_fuse(g, pin, d, np.zeros(a.shape, bool), mem, dustbin=False)
    np.testing.assert_array_equal(q, g.astype(np.float32))


def test_closed_forms_dustbin():
    # K=2, one specialist on class 0 with a dustbin: maximise
    # (g0 + p0) log q0 + (g1 + d) log (1 - q0)  ->  q0 = (g0 + p0) / 2.
    g = np.array([[0.3, 0.7], [0.9, 0.1]])
    pin = np.array([[[0.8, 0.0]], [[0.25, 0.0]]])
    d = np.array([[0.2], [0.75]])
    q = run_fuse(g, pin, d, np.ones((2, 1)), membership_matrix([[0]], 2))
    np.testing.assert_allclose(q[:, 0], (g[:, 0] + pin[:, 0, 0]) / 2, atol=1e-6)
    # K=4, one specialist on S = {1, 2}: q_j = (g_j + p_j) / 2 inside S; outside S the
    # dustbin is shared in proportion to g, q_k = g_k (G_out + d) / (2 G_out).
    g = np.array([[0.1, 0.2, 0.3, 0.4]])
    pin = np.array([[[0.0, 0.5, 0.1, 0.0]]])
    d = np.array([[0.4]])
    q = run_fuse(g, pin, d, np.ones((1, 1)), membership_matrix([[1, 2]], 4))
    g_out = 0.5
    expected = [0.1 * (g_out + 0.4) / (2 * g_out), 0.35, 0.2, 0.4 * (g_out + 0.4) / (2 * g_out)]
    np.testing.assert_allclose(q[0], expected, atol=1e-6)


def test_closed_forms_no_dustbin():
    g = np.array([[0.1, 0.2, 0.3, 0.4]])
    one = np.ones((1, 1))
    # A specialist over all classes: KL(p_g || q) + KL(p_m || q)  ->  q = (p_g + p_m) / 2.
    p_all = np.array([[[0.4, 0.3, 0.2, 0.1]]])
    q = run_fuse(g, p_all, np.zeros((1, 1)), one, membership_matrix([[0, 1, 2, 3]], 4),
                 dustbin=False)  # fmt: skip
    np.testing.assert_allclose(q[0], (g[0] + p_all[0, 0]) / 2, atol=1e-6)
    # A one-class specialist always says "1": no information, q = p_g.
    p_one = np.array([[[0.0, 0.0, 1.0, 0.0]]])
    q = run_fuse(g, p_one, np.zeros((1, 1)), one, membership_matrix([[2]], 4), dustbin=False)
    np.testing.assert_allclose(q[0], g[0], atol=1e-6)
    # One specialist on S = {1, 2}: stationarity gives q_k = g_k outside S (so Q = G_in)
    # and q_j = G_in (g_j + p_j) / (G_in + 1) inside.
    p_s = np.array([[[0.0, 0.9, 0.1, 0.0]]])
    q = run_fuse(g, p_s, np.zeros((1, 1)), one, membership_matrix([[1, 2]], 4), dustbin=False)
    g_in = 0.5
    expected = [0.1, g_in * 1.1 / 1.5, g_in * 0.4 / 1.5, 0.4]
    np.testing.assert_allclose(q[0], expected, atol=1e-6)


@pytest.mark.parametrize("dustbin", [True, False], ids=["dustbin", "no-dustbin"])
def test_permuting_classes_permutes_the_answer(dustbin):
    rng = np.random.default_rng(11)
    g, pin, d, a, mem = random_case(rng, dustbin, rows=6, k=7, m=3)
    perm = rng.permutation(7)
    q = run_fuse(g, pin, d, a, mem, dustbin=dustbin)
    q_perm = run_fuse(g[:, perm], pin[:, :, perm], d, a, mem[:, perm], dustbin=dustbin)
    np.testing.assert_allclose(q_perm, q[:, perm], atol=2e-6)


@pytest.mark.parametrize("dustbin", [True, False], ids=["dustbin", "no-dustbin"])
def test_extreme_inputs_stay_finite_and_on_simplex(dustbin):
    k = 4
    mem = membership_matrix([[0, 1], [1, 2], [3]], k)
    one_hot = np.eye(k)
    rows = []
    for g in (one_hot[0], one_hot[3], np.array([1 - 3e-8, 1e-8, 1e-8, 1e-8]), np.full(k, 0.25)):
        for in0, in1, dust in ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (0.5, 0.5, 0.0)):
            pin = np.zeros((3, k))
            pin[0, [0, 1]] = [in0, in1]
            pin[1, [1, 2]] = [in1, in0]
            pin[2, 3] = 1.0 - dust if dustbin else 1.0
            d = np.array([dust, dust, dust]) if dustbin else np.zeros(3)
            if not dustbin:  # no dustbin: the in-group part is the whole distribution
                total = pin[:2].sum(-1, keepdims=True)
                pin[:2] = np.where(total > 0, pin[:2] / np.maximum(total, 1e-30), 0.5 * mem[:2])
            rows.append((g, pin, d))
    g = np.stack([r[0] for r in rows])
    pin = np.stack([r[1] for r in rows])
    d = np.stack([r[2] for r in rows])
    a = np.ones((len(rows), 3))
    q = run_fuse(g, pin, d, a, mem, dustbin=dustbin)
    assert_on_simplex(q)
    f = keras.ops.convert_to_numpy(fusion_objective(q, g, pin, d, a, mem, dustbin=dustbin))
    assert np.all(np.isfinite(f))
    # Each fused q is no worse than the generalist alone.
    f_g = keras.ops.convert_to_numpy(fusion_objective(g, g, pin, d, a, mem, dustbin=dustbin))
    assert np.all(f <= f_g + 1e-5)


def test_fusion_objective_matches_reference():
    rng = np.random.default_rng(5)
    for dustbin in (True, False):
        g, pin, d, a, mem = random_case(rng, dustbin, rows=4, k=6, m=3)
        q = rng.dirichlet(np.ones(6), size=4)
        f = keras.ops.convert_to_numpy(fusion_objective(q, g, pin, d, a, mem, dustbin=dustbin))
        ref = [ref_objective(q[b], g[b], pin[b], d[b], a[b], mem, dustbin)[0] for b in range(4)]
        np.testing.assert_allclose(f, ref, rtol=1e-4, atol=1e-5)


def test_membership_and_scatter():
    mem = membership_matrix([[0, 2], [2, 3]], 4)
    np.testing.assert_array_equal(mem, [[1, 0, 1, 0], [0, 0, 1, 1]])
    assert mem.dtype == np.float32
    probs = np.array([[0.6, 0.3, 0.1], [0.0, 0.0, 1.0]], np.float32)
    in_probs, dust = scatter_specialist(probs, [3, 1], 4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(in_probs), [[0, 0.3, 0, 0.6], [0] * 4])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dust), [0.1, 1.0])
    in_probs, dust = scatter_specialist(probs, [0, 1, 2], 4, dustbin=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(in_probs)[:, :3], probs)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(dust), [0, 0])


@pytest.mark.parametrize(
    "groups, match",
    [([[0, 4]], "outside"), ([[]], "non-empty"), ([[1, 1]], "repeats"), ([[-1]], "outside")],
)
def test_membership_rejects_bad_groups(groups, match):
    with pytest.raises(ValueError, match=match):
        membership_matrix(groups, 4)


def test_shape_errors():
    with pytest.raises(ValueError, match="expected"):
        scatter_specialist(np.ones((2, 3), np.float32), [0, 1, 2], 4)  # needs 4 columns
    mem = membership_matrix([[0, 1]], 3)
    g = np.full((2, 3), 1 / 3, np.float32)
    with pytest.raises(ValueError, match="p_in"):
        fuse(g, np.zeros((2, 2, 3), np.float32), np.zeros((2, 1), np.float32),
             np.ones((2, 1), np.float32), mem)  # fmt: skip
    with pytest.raises(ValueError, match="iterations"):
        fuse(g, np.zeros((2, 1, 3), np.float32), np.zeros((2, 1), np.float32),
             np.ones((2, 1), np.float32), mem, iterations=-1)  # fmt: skip


_JAX_SCRIPT = """
import json, sys
import numpy as np
import keras
from edgekd.training.ensemble.fusion import fuse
case = json.loads(sys.stdin.read())
out = {}
for dustbin in (True, False):
    args = [np.asarray(case[key + str(int(dustbin))], np.float32) for key in "g pin d a".split()]
    q = fuse(*args, np.asarray(case["mem"], np.float32), dustbin=dustbin)
    out[str(dustbin)] = keras.ops.convert_to_numpy(q).tolist()
print(json.dumps({"backend": keras.backend.backend(), "q": out}))
"""


def test_jax_backend_agrees():
    pytest.importorskip("jax")
    rng = np.random.default_rng(21)
    case, expected = {}, {}
    for dustbin in (True, False):
        g, pin, d, a, _ = random_case(rng, dustbin, rows=4, k=5, m=2)
        mem = membership_matrix([[0, 1, 2], [2, 3]], 5)
        pin = pin * 0.0
        for j in range(2):  # redraw the in-group parts for these fixed groups
            idx = np.flatnonzero(mem[j])
            p = rng.dirichlet(np.ones(len(idx) + int(dustbin)), size=4)
            pin[:, j, idx] = p[:, : len(idx)]
            d[:, j] = p[:, -1] if dustbin else 0.0
        for key, value in zip(["g", "pin", "d", "a"], (g, pin, d, a), strict=True):
            case[key + str(int(dustbin))] = value.tolist()
        case["mem"] = mem.tolist()
        expected[str(dustbin)] = run_fuse(g, pin, d, a, mem, dustbin=dustbin)
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT],
        input=json.dumps(case),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == "jax"
    for dustbin in (True, False):
        np.testing.assert_allclose(np.asarray(out["q"][str(dustbin)]), expected[str(dustbin)],
                                   atol=1e-5)  # fmt: skip
