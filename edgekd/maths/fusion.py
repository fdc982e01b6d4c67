"""Gating and KL fusion of a gated ensemble in plain numpy, for devices without Keras.

A line-by-line port of `edgekd.training.ensemble.gating` (`top_n_candidates`, `gate`) and
`edgekd.training.ensemble.fusion` (`membership_matrix`, `scatter_specialist`, `fuse`,
`fusion_objective`), whose docstrings derive the maths. In short, `fuse` returns the q that
minimises

    KL(p_g || q) + sum_{m active} KL(p_m || A_m q)

with EM started from the observed weights, plus a Newton proposal in every iteration (primal
Newton in q with a dustbin, dual Newton in M numbers without one); the better of the two
goes on, and a row stops once no entry of q moves by `tol`.

Same defaults, same stopping rule and the same float32 arithmetic as the Keras version (the
port keeps its operations in their order), so both give the same q to float32 rounding.
Unlike it, only rows that still move are computed in an iteration: rows are independent,
so that changes nothing but the time. Nothing here imports TensorFlow or Keras.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgekd.contract import FUSION_EPS, FUSION_ITERATIONS, FUSION_TOL

__all__ = [
    "fuse",
    "fusion_objective",
    "gate",
    "membership_matrix",
    "scatter_specialist",
    "softmax",
    "top_n_candidates",
]

_F32 = np.float32
# Same constants as edgekd.training.ensemble.fusion (see there for why).
_NOISE = _F32(1e-6)
_START_FLOOR = _F32(1e-12)
_SLOPE_SLACK = _F32(1e-3)
_RIDGE = _F32(1e-6)
_TINY = _F32(1e-37)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax computed in float64, returned as float32 (as `predict_probs` does)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(_F32)


# ---------------------------------------------------------------------------------------
# Gating (edgekd.training.ensemble.gating)


def top_n_candidates(p_general: np.ndarray, n: int) -> np.ndarray:
    """0/1 float32 mask (B, K) of each row's n most probable classes; ties go to the lower
    class index (as `keras.ops.top_k`). n > K means all K.

    Raises:
        ValueError: if `n` < 1.
    """
    if int(n) < 1:
        raise ValueError(f"top_n must be >= 1, got {n!r}.")
    p = np.asarray(p_general, _F32)
    n = min(int(n), p.shape[-1])
    # A stable sort of -p keeps equal entries in index order: ties go to the lower index.
    idx = np.argsort(-p, axis=-1, kind="stable")[..., :n]
    out = np.zeros(p.shape, _F32)
    np.put_along_axis(out, idx, _F32(1.0), axis=-1)
    return out


def gate(
    p_general: np.ndarray,
    membership: np.ndarray,
    *,
    top_n: int = 1,
    confidence: float | None = None,
) -> np.ndarray:
    """Which specialists each image wakes: float32 0/1 (B, M).

    Specialist m is active when its classes meet the generalist's top-n classes; with
    `confidence`, images whose top probability is at least that wake none.

    Raises:
        ValueError: if the shapes disagree or `top_n` < 1.
    """
    p = np.asarray(p_general, _F32)
    mem = np.asarray(membership, _F32)
    if p.ndim != 2 or mem.ndim != 2 or p.shape[-1] != mem.shape[-1]:
        raise ValueError(
            f"expected p_general (B, K) and membership (M, K); got shapes {p.shape} "
            f"and {mem.shape}."
        )
    hits = top_n_candidates(p, top_n) @ mem.T  # (B, M) overlap sizes
    active = (hits > 0.5).astype(_F32)
    if confidence is not None:
        unsure = p.max(axis=-1, keepdims=True) < _F32(confidence)
        active = active * unsure.astype(_F32)
    return active


# ---------------------------------------------------------------------------------------
# Fusion (edgekd.training.ensemble.fusion)


def membership_matrix(groups: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """float32 (M, K) with `out[m, k] == 1` iff class k is in group m.

    Raises:
        ValueError: if `num_classes` < 1, or a group is empty, out of range or repeats.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    out = np.zeros((len(groups), int(num_classes)), dtype=_F32)
    for m, group in enumerate(groups):
        out[m, check_group(group, num_classes, what=f"groups[{m}]")] = 1.0
    return out


def scatter_specialist(
    probs: np.ndarray, group: Sequence[int], num_classes: int, dustbin: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Place one specialist's probabilities (B, |S| [+ 1 dustbin last]) at its classes.

    Returns float32 `(in_probs (B, K), dust (B,))`; `dust` is zeros when `dustbin=False`.

    Raises:
        ValueError: if the group is invalid or `probs` has the wrong number of columns.
    """
    idx = check_group(group, num_classes, what="group")
    width = len(idx) + (1 if dustbin else 0)
    probs = np.asarray(probs, _F32)
    if probs.ndim != 2 or probs.shape[-1] != width:
        raise ValueError(
            f"specialist output has shape {probs.shape}, expected (batch, {width}) for a "
            f"group of {len(idx)} classes {'plus a dustbin' if dustbin else 'without a dustbin'}."
        )
    in_probs = np.zeros((len(probs), int(num_classes)), _F32)
    in_probs[:, idx] = probs[:, : len(idx)]
    dust = probs[:, -1].copy() if dustbin else np.zeros(len(probs), _F32)
    return in_probs, dust


def fuse(
    p_general: np.ndarray,
    p_in: np.ndarray,
    p_dust: np.ndarray,
    active: np.ndarray,
    membership: np.ndarray,
    *,
    dustbin: bool = True,
    iterations: int = FUSION_ITERATIONS,
    tol: float = FUSION_TOL,
    eps: float = FUSION_EPS,
) -> np.ndarray:
    """The q (B, K) minimising `KL(p_g || q) + sum_{m active} KL(p_m || A_m q)`.

    Arguments and defaults as in `edgekd.training.ensemble.fusion.fuse`: p_general (B, K), p_in
    (B, M, K) scattered in-group probabilities, p_dust (B, M) dustbin masses (ignored
    without a dustbin), active (B, M) bool or 0/1, membership (M, K). Returns float32 rows
    on the simplex; rows with no active specialist are `p_general` itself.

    Raises:
        ValueError: if the shapes disagree or `iterations` is negative.
    """
    if int(iterations) < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations!r}.")
    g, w, b, act, mem, comp = _prepare(p_general, p_in, p_dust, active, membership, dustbin)
    eps32, tol32 = _F32(eps), _F32(tol)
    out = g.copy()
    rows = np.flatnonzero(np.any(act > 0, axis=-1))
    if rows.size == 0:
        return out
    # Rows are independent, so those no specialist touches (the answer is g) are skipped.
    g, w, b = g[rows], w[rows], b[rows]
    with np.errstate(all="ignore"):  # float32 overflow/0-division are handled as in Keras
        em = _Em(w, b, mem, comp, dustbin=dustbin, eps=eps32)
        newton = (
            _PrimalNewton(w, b, comp, eps=eps32)
            if dustbin
            else _DualNewton(g, w, b, mem, eps=eps32)
        )
        q = np.maximum(w, _START_FLOOR)
        q = em(q / q.sum(axis=-1, keepdims=True))
        v = newton.start(q)
        live = np.arange(len(rows))  # rows not done yet, as indices into the kept rows
        for _ in range(int(iterations)):
            if live.size == 0:
                break
            sub_em, sub_newton = em.take(live), newton.take(live)
            q_live = q[live]
            q_em = sub_em(q_live)
            v_live, q_newton, moved = sub_newton.step(v[live], q_live)
            # Ties within float32 resolution go to a Newton step that moved (as in Keras).
            change, noise = sub_em.gain(q_newton, q_em)
            tie_ok = moved & (change <= noise)
            keep = np.isfinite(change) & ((change < -noise) | tie_ok)
            keep &= np.all(np.isfinite(q_newton), axis=-1)
            q_new = np.where(keep[:, None], q_newton, q_em)
            q[live], v[live] = q_new, v_live
            # A row that moved less than tol is done and stays put.
            live = live[~(np.max(np.abs(q_new - q_live), axis=-1) < tol32)]
    out[rows] = q
    return out


def fusion_objective(
    q: np.ndarray,
    p_general: np.ndarray,
    p_in: np.ndarray,
    p_dust: np.ndarray,
    active: np.ndarray,
    membership: np.ndarray,
    *,
    dustbin: bool = True,
    eps: float = FUSION_EPS,
) -> np.ndarray:
    """`KL(p_g || q) + sum_{m active} KL(p_m || A_m q)` per row (float32 (B,)), as
    `edgekd.training.ensemble.fusion.fusion_objective`; `fuse` minimises it."""
    g, _, _, act, mem, comp = _prepare(p_general, p_in, p_dust, active, membership, dustbin)
    p = np.asarray(p_in, _F32) * mem[None]
    q = np.asarray(q, _F32)
    eps32 = _F32(eps)
    with np.errstate(all="ignore"):

        def log(x: np.ndarray) -> np.ndarray:
            return np.log(np.maximum(x, eps32))

        logq = log(q)
        kl_g = np.sum(g * (log(g) - logq), axis=-1)
        if dustbin:
            d = np.asarray(p_dust, _F32)
            kl_m = np.sum(p * (log(p) - logq[:, None, :]), axis=-1)
            kl_m = kl_m + d * (log(d) - log(q @ comp.T))
        else:
            logq_in = np.log(q + eps32)
            mass = q @ mem.T + eps32 * mem.sum(axis=-1)
            kl_m = np.sum(p * (log(p) - logq_in[:, None, :]), axis=-1)
            kl_m = kl_m + p.sum(axis=-1) * np.log(mass)
        return kl_g + np.sum(act * kl_m, axis=-1)


# ---------------------------------------------------------------------------------------
# Internals, each the numpy twin of the same-named piece of edgekd.training.ensemble.fusion.


def _rel_log(x: np.ndarray, y: np.ndarray, eps: np.float32) -> np.ndarray:
    """log(x / y), accurate when x is close to y."""
    x = np.maximum(x, eps)
    y = np.maximum(y, eps)
    rel = (x - y) / y
    near = np.abs(rel) < 0.5
    return np.where(near, np.log1p(np.where(near, rel, _F32(0.0))), np.log(x) - np.log(y))


def _take_rows(obj: Any, rows: np.ndarray, per_row: Sequence[str]) -> Any:
    """A shallow copy of a solver with its per-row arrays `per_row` cut to `rows`."""
    sub = type(obj).__new__(type(obj))
    sub.__dict__.update(obj.__dict__)
    for name in per_row:
        setattr(sub, name, getattr(obj, name)[rows])
    return sub


class _Em:
    """The EM map and objective differences for one batch (see the Keras module)."""

    def __init__(
        self,
        w: np.ndarray,
        b: np.ndarray,
        mem: np.ndarray,
        comp: np.ndarray,
        *,
        dustbin: bool,
        eps: np.float32,
    ) -> None:
        self.w, self.b, self.mem, self.comp, self.eps, self.dustbin = w, b, mem, comp, eps, dustbin
        self.dmat = np.ascontiguousarray((comp if dustbin else mem).T)  # (K, M)
        self.sign = _F32(1.0 if dustbin else -1.0)
        self.scale_weight = w.sum(axis=-1) + self.sign * b.sum(axis=-1)

    def take(self, rows: np.ndarray) -> _Em:
        """The same map for a subset of the rows."""
        return _take_rows(self, rows, ("w", "b", "scale_weight"))

    def __call__(self, q: np.ndarray) -> np.ndarray:
        c = self.b / np.maximum(q @ self.dmat, self.eps)  # (B, M)
        num = self.w + q * (c @ self.comp)
        return num / np.maximum(num.sum(axis=-1, keepdims=True), self.eps)

    def gain(self, q_a: np.ndarray, q_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Objective at q_a minus at q_b (both normalised), and its float32 noise, (B,)."""
        d_a = q_a @ self.dmat
        d_b = q_b @ self.dmat
        terms_q = self.w * _rel_log(q_a, q_b, self.eps)
        terms_d = self.b * _rel_log(d_a, d_b, self.eps)
        scale = _rel_log(q_a.sum(axis=-1, keepdims=True), q_b.sum(axis=-1, keepdims=True), self.eps)
        change = -terms_q.sum(axis=-1) - self.sign * terms_d.sum(axis=-1)
        change = change + self.scale_weight * scale[:, 0]
        size = np.abs(terms_q).sum(axis=-1) + np.abs(terms_d).sum(axis=-1)
        return change, _NOISE * (size + self.scale_weight)


class _PrimalNewton:
    """Damped Newton on the dustbin problem, in q on the simplex (Woodbury, (M, M) per row)."""

    _STEPS = (1.0, 0.9, 0.75, 0.5, 0.25, 0.125, 0.0625, 0.015625, 0.0)

    def __init__(self, w: np.ndarray, b: np.ndarray, comp: np.ndarray, *, eps: np.float32):
        self.w, self.b, self.comp, self.eps = w, b, comp, eps
        self.comp_t = np.ascontiguousarray(comp.T)  # (K, M)
        self.m = comp.shape[0]
        self.seen = (w > 0.0).astype(_F32)
        self.eye = np.eye(self.m, dtype=_F32)[None]
        self.pairs = (self.comp_t[:, :, None] * self.comp_t[:, None, :]).reshape(-1, self.m**2)
        self.steps = np.asarray(self._STEPS, _F32)[None, :, None]
        self.unmoved = np.arange(len(self._STEPS)) == len(self._STEPS) - 1

    def take(self, rows: np.ndarray) -> _PrimalNewton:
        """The same solver for a subset of the rows."""
        return _take_rows(self, rows, ("w", "b", "seen"))

    def start(self, q: np.ndarray) -> np.ndarray:
        """No state of its own: a placeholder of shape (B, M)."""
        return np.zeros_like(self.b)

    def step(self, v: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One damped Newton step from q: (v unchanged, new q, (B,) whether it moved)."""
        rest = np.maximum(q @ self.comp_t, self.eps)  # R (B, M)
        pull = (self.b / rest) @ self.comp  # (B, K)
        dinv = self.seen * q * q / np.maximum(self.w, _TINY)
        sigma = np.sqrt(self.b) / rest  # (B, M)
        y = np.stack([self.seen * q + dinv * pull, dinv], axis=1)  # (B, 2, K)
        cap = (dinv @ self.pairs).reshape(-1, self.m, self.m)
        cap = self.eye + sigma[:, :, None] * sigma[:, None, :] * cap
        z = sigma[:, None, :] * (y @ self.comp_t)  # (B, 2, M)
        sol = np.swapaxes(_solve_spd(cap, np.swapaxes(z, 1, 2)), 1, 2)  # (B, 2, M)
        h = y - dinv[:, None, :] * ((sigma[:, None, :] * sol) @ self.comp)  # (B, 2, K)
        h_grad, h_one = h[:, 0], h[:, 1]
        nu = h_grad.sum(axis=-1, keepdims=True) / np.maximum(
            h_one.sum(axis=-1, keepdims=True), self.eps
        )
        move = h_grad - nu * h_one
        move = np.where(np.isfinite(move), move, _F32(0.0)) * self.seen
        # Line search: the longest step that keeps q > 0 where w > 0 and L rising.
        cand = q[:, None, :] + self.steps * move[:, None, :]  # (B, T, K)
        positive = np.all((cand > 0.0) | (self.seen[:, None, :] == 0.0), axis=-1)
        cand = np.maximum(cand, _F32(0.0))
        rest_t = np.maximum(cand @ self.comp_t, self.eps)  # (B, T, M)
        grad_t = self.w[:, None, :] / np.maximum(cand, _TINY) + (
            (self.b[:, None, :] / rest_t) @ self.comp
        )
        grad_t = (
            grad_t
            - (grad_t * self.seen[:, None, :]).sum(axis=-1, keepdims=True)
            / (np.maximum(self.seen.sum(axis=-1, keepdims=True), _F32(1.0))[:, None, :])
        )
        slope = (grad_t * move[:, None, :]).sum(axis=-1)  # (B, T); NaN compares False
        ok = positive & (slope >= -_SLOPE_SLACK * np.abs(slope[:, -1:]))
        best, moved = _longest_ok(ok, self.unmoved)
        q_new = cand[np.arange(len(cand)), best]
        return v, q_new / np.maximum(q_new.sum(axis=-1, keepdims=True), self.eps), moved


class _DualNewton:
    """Damped Newton on the no-dustbin problem's M-dimensional convex dual in v = log u."""

    _STEPS = (1.0, 0.9, 0.75, 0.5, 0.25, 0.125, 0.0625, 0.015625, 0.0)
    _V_MAX = _F32(40.0)
    _MAX_MOVE = _F32(10.0)

    def __init__(
        self, g: np.ndarray, w: np.ndarray, b: np.ndarray, mem: np.ndarray, *, eps: np.float32
    ):
        self.w, self.b, self.mem, self.eps = w, b, mem, eps
        self.mem_t = np.ascontiguousarray(mem.T)  # (K, M)
        self.m = mem.shape[0]
        self.pairs = (self.mem_t[:, :, None] * self.mem_t[:, None, :]).reshape(-1, self.m**2)
        self.g_total = g.sum(axis=-1, keepdims=True)  # (B, 1)
        self.live = (b > 0.0).astype(_F32)
        self.dead = _F32(1.0) - self.live
        self.eye = np.eye(self.m, dtype=_F32)[None]
        self.off = _F32(1.0) - self.eye
        self.steps = np.asarray(self._STEPS, _F32)[None, :, None]
        self.unmoved = np.arange(len(self._STEPS)) == len(self._STEPS) - 1

    def take(self, rows: np.ndarray) -> _DualNewton:
        """The same solver for a subset of the rows."""
        return _take_rows(self, rows, ("w", "b", "g_total", "live", "dead"))

    def start(self, q: np.ndarray) -> np.ndarray:
        """v at u_m = b_m / Q_m under q, clipped to [-40, 40]."""
        u = self.b / np.maximum(q @ self.mem_t, self.eps)
        v = np.log(np.maximum(u, self.eps)) * self.live
        return np.clip(v, -self._V_MAX, self._V_MAX)

    def step(self, v: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One damped Newton step from v: (new v, its q, (B,) whether it moved)."""
        u = self.live * np.exp(v)  # (B, M)
        den = self.g_total + u @ self.mem  # (B, K)
        qd = self.w / den
        uq = u * (qd @ self.mem_t)  # (B, M)
        grad = uq - self.b
        t = qd / den  # (B, K)
        s = (t @ self.pairs).reshape(-1, self.m, self.m)  # (B, M, M)
        others = (u[:, None, :] * self.off) @ self.mem  # (B, M, K)
        rest = (t @ self.mem_t) * self.g_total + np.sum(
            self.mem[None] * t[:, None, :] * others, axis=-1
        )
        diag = u * rest + self.dead
        hess = self.eye * diag[:, :, None] - self.off * (u[:, :, None] * u[:, None, :] * s)
        move = -_solve_spd(hess, grad[:, :, None])[..., 0] * self.live
        largest = np.max(np.abs(move), axis=-1, keepdims=True)
        move = move * np.minimum(_F32(1.0), self._MAX_MOVE / np.maximum(largest, self.eps))
        move = np.where(np.isfinite(move), move, _F32(0.0))
        # Line search: the longest step whose slope along the move is still <= 0.
        cand = np.clip(v[:, None, :] + self.steps * move[:, None, :], -self._V_MAX, self._V_MAX)
        u_t = self.live[:, None, :] * np.exp(cand)  # (B, T, M)
        qd_t = self.w[:, None, :] / (self.g_total[:, :, None] + u_t @ self.mem)
        grad_t = u_t * (qd_t @ self.mem_t) - self.b[:, None, :]
        slope = (grad_t * move[:, None, :]).sum(axis=-1)  # (B, T); NaN compares False
        ok = slope <= _SLOPE_SLACK * np.abs(slope[:, -1:])
        best, moved = _longest_ok(ok, self.unmoved)
        pick = np.arange(len(cand))
        v_new, q_new = cand[pick, best], qd_t[pick, best]
        return v_new, q_new / np.maximum(q_new.sum(axis=-1, keepdims=True), self.eps), moved


def _solve_spd(a: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve batched SPD systems (B, M, M) x = rhs (B, M, R) without ever raising: unit
    diagonal plus a ridge, identity where not finite, 0 where the solution is not finite."""
    diag = np.diagonal(a, axis1=1, axis2=2)  # (B, M)
    scale = _F32(1.0) / np.sqrt(np.maximum(diag, _F32(1e-30)))
    eye = np.eye(a.shape[-1], dtype=_F32)[None]
    a_n = a * scale[:, :, None] * scale[:, None, :] + _RIDGE * eye
    finite = np.all(np.isfinite(a_n), axis=(1, 2))[:, None, None]
    a_n = np.where(finite, a_n, eye)
    rhs = np.where(np.isfinite(rhs), rhs, _F32(0.0)) * scale[:, :, None]
    try:
        x = np.linalg.solve(a_n, rhs)
    except np.linalg.LinAlgError:  # one singular matrix: solve row by row, 0 where singular
        x = np.zeros_like(rhs)
        for i in range(len(a_n)):
            with contextlib.suppress(np.linalg.LinAlgError):
                x[i] = np.linalg.solve(a_n[i], rhs[i])
    x = x * scale[:, :, None]
    return np.where(np.isfinite(x), x, _F32(0.0))


def _longest_ok(ok: np.ndarray, unmoved: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the first (longest) acceptable step per row, and whether the row moved."""
    best = np.argmax(ok | unmoved[None, :], axis=1)
    return best, best < unmoved.shape[0] - 1


def _prepare(
    p_general: np.ndarray,
    p_in: np.ndarray,
    p_dust: np.ndarray,
    active: np.ndarray,
    membership: np.ndarray,
    dustbin: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cast, check shapes and build the EM's weights: `(g, w, b, active, mem, comp)`.

    w = p_g + the active specialists' in-group probabilities; b = each active specialist's
    hidden mass (dustbin, or in-group total without one). Without a dustbin, one-class
    specialists carry no information and are dropped from `active`.
    """
    g = np.asarray(p_general, _F32)
    p = np.asarray(p_in, _F32)
    act = np.asarray(active).astype(_F32)
    mem = np.asarray(membership, _F32)
    if g.ndim != 2 or p.ndim != 3 or act.ndim != 2 or mem.ndim != 2:
        raise ValueError(
            "expected p_general (B, K), p_in (B, M, K), active (B, M) and membership (M, K); "
            f"got shapes {g.shape}, {p.shape}, {act.shape} and {mem.shape}."
        )
    num_specialists, num_classes = mem.shape
    for name, got, want in (
        ("p_general", g.shape[-1:], (num_classes,)),
        ("p_in", p.shape[-2:], (num_specialists, num_classes)),
        ("active", act.shape[-1:], (num_specialists,)),
    ):
        if tuple(got) != want:
            raise ValueError(
                f"{name} ends in shape {tuple(got)} but membership {mem.shape} implies {want}."
            )
    comp = _F32(1.0) - mem
    p = p * mem[None]
    if not dustbin:
        act = act * (mem.sum(axis=-1) > 1.5).astype(_F32)[None, :]
    w = g + np.sum(act[:, :, None] * p, axis=1)
    if dustbin:
        d = np.asarray(p_dust, _F32)
        if d.ndim != 2 or d.shape[-1] != num_specialists:
            raise ValueError(f"p_dust has shape {d.shape}, expected (batch, {num_specialists}).")
        b = act * d
    else:
        b = act * p.sum(axis=-1)
    return g, w, b, act, mem, comp


def check_group(group: Sequence[int], num_classes: int, *, what: str) -> np.ndarray:
    """Validate one class group and return it as an int array."""
    idx = np.asarray(list(group), dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"{what} must be a non-empty sequence of class indices, got {group!r}.")
    if idx.min() < 0 or idx.max() >= int(num_classes):
        raise ValueError(
            f"{what} = {list(idx)} has an index outside [0, {int(num_classes)}); "
            "class indices count from 0."
        )
    if len(set(idx.tolist())) != idx.size:
        raise ValueError(f"{what} = {list(idx)} repeats a class index.")
    return idx
