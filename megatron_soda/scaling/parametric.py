"""Chinchilla's approach 3: L(N, D) = E + A / N^alpha + B / D^beta, fitted to every run at once.

As Hoffmann et al. (2022, appendix D.2): minimize the Huber loss (delta 1e-3) between log L and
log L_hat = LSE(a - alpha log N, b - beta log D, e), with A = e^a, B = e^b, E = e^e, from a grid of starts,
keeping the best. The minimizer is a damped Gauss-Newton (Levenberg-Marquardt) on the Huber loss's
iteratively reweighted least squares, vectorised over all starts (and bootstrap resamples) with numpy: no
scipy needed. Under C = k N D the compute-optimal split is N_opt ~ C^(beta / (alpha + beta)) and
D_opt ~ C^(alpha / (alpha + beta)).
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, Optional

import numpy as np

HUBER_DELTA = 1e-3
START_GRID = {
    "e": (-1.0, 0.0, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
"""Chinchilla's initialisation grid (e coarser): 2,700 starts, all minimised at once."""
PARAMETERS = ("e", "a", "b", "alpha", "beta")
REFINED = 64
"""Starts taken on to convergence after a short descent from all of them."""


def _predict(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray):
    """log L_hat [P, n] and its softmax weights [P, n, 3] for parameters ``theta`` [P, 5]."""
    terms = np.stack(
        [
            theta[:, 1:2] - theta[:, 3:4] * log_n,
            theta[:, 2:3] - theta[:, 4:5] * log_d,
            np.broadcast_to(theta[:, 0:1], (theta.shape[0], log_n.size)),
        ],
        axis=-1,
    )
    top = terms.max(axis=-1, keepdims=True)
    exp = np.exp(terms - top)
    total = exp.sum(axis=-1, keepdims=True)
    return (top + np.log(total))[..., 0], exp / total


def _huber(residual: np.ndarray, weights: np.ndarray) -> np.ndarray:
    size = np.abs(residual)
    return (weights * np.where(size <= HUBER_DELTA, 0.5 * residual**2, HUBER_DELTA * (size - 0.5 * HUBER_DELTA))).sum(
        axis=-1
    )


def minimize(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, weights: np.ndarray, steps: int = 300
):
    """Minimises the weighted Huber objective from each row of ``theta`` [P, 5] (``weights`` [P, n]: run
    multiplicities); returns the parameters and objectives reached."""
    theta = theta.astype(np.float64).copy()
    damping = np.full(theta.shape[0], 1e-3)
    predicted, _ = _predict(theta, log_n, log_d)
    objective = _huber(predicted - log_l, weights)
    for _ in range(steps):
        predicted, soft = _predict(theta, log_n, log_d)
        residual = predicted - log_l
        jacobian = np.stack(
            [soft[..., 2], soft[..., 0], soft[..., 1], -soft[..., 0] * log_n, -soft[..., 1] * log_d], axis=-1
        )
        irls = weights * np.minimum(1.0, HUBER_DELTA / np.maximum(np.abs(residual), 1e-300))
        gradient = np.einsum("pn,pnk->pk", irls * residual, jacobian)
        hessian = np.einsum("pn,pnk,pnl->pkl", irls, jacobian, jacobian)
        diagonal = np.einsum("pkk->pk", hessian)
        system = hessian + (damping[:, None] * (diagonal + 1e-12))[:, :, None] * np.eye(5)
        step = np.linalg.solve(system, gradient[..., None])[..., 0]
        trial = theta - step
        trial_predicted, _ = _predict(trial, log_n, log_d)
        trial_objective = _huber(trial_predicted - log_l, weights)
        better = np.isfinite(trial_objective) & (trial_objective < objective)
        theta[better] = trial[better]
        objective = np.where(better, trial_objective, objective)
        damping = np.clip(np.where(better, damping * 0.3, damping * 10.0), 1e-12, 1e12)
    return theta, objective


def _starts() -> np.ndarray:
    return np.array(list(itertools.product(*(START_GRID[name] for name in PARAMETERS))), dtype=np.float64)


def _as_dict(theta: np.ndarray) -> Dict[str, float]:
    e, a, b, alpha, beta = (float(v) for v in theta)
    return {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta}


def fit_parametric(
    log_n: np.ndarray,
    log_d: np.ndarray,
    loss: np.ndarray,
    groups: Optional[Dict[float, np.ndarray]] = None,
    samples: int = 0,
    seed: int = 0,
) -> Dict[str, Any]:
    """The best fit from every start, and with ``samples`` > 0 the fits of resamples of runs within
    ``groups`` (budgets), each from the full fit's four best distinct optima. Returns the parameters
    (``E, A, B, alpha, beta``), the objective, and the resampled parameters as rows of (e, a, b, alpha, beta)."""
    log_l = np.log(loss)
    starts = _starts()  # a short descent from every start, then the most promising ones to convergence
    theta, objective = minimize(starts, log_n, log_d, log_l, np.ones((len(starts), log_n.size)), steps=40)
    theta = theta[np.argsort(objective)[:REFINED]]
    theta, objective = minimize(theta, log_n, log_d, log_l, np.ones((len(theta), log_n.size)))
    order = np.argsort(objective)
    best = theta[order[0]]
    result: Dict[str, Any] = {"parameters": _as_dict(best), "objective": float(objective[order[0]]), "runs": log_n.size}
    if samples <= 0:
        return result
    _, first = np.unique(np.round(theta[order], 4), axis=0, return_index=True)
    seeds = theta[order][np.sort(first)[:4]]
    rng = np.random.default_rng(seed)
    counts = np.zeros((samples, log_n.size))
    for index in (groups or {0.0: np.arange(log_n.size)}).values():
        for row in counts:
            np.add.at(row, index[rng.integers(0, len(index), len(index))], 1.0)
    repeated = np.repeat(counts, len(seeds), axis=0)
    theta_b, objective_b = minimize(np.tile(seeds, (samples, 1)), log_n, log_d, log_l, repeated, steps=100)
    objective_b = objective_b.reshape(samples, len(seeds))
    chosen = theta_b.reshape(samples, len(seeds), 5)[np.arange(samples), objective_b.argmin(axis=1)]
    result["bootstrap"] = chosen
    return result


def loss_at(parameters: Dict[str, float], n: float, d: float) -> float:
    """L(N, D) under fitted ``parameters`` (inf, not an error, where a wild fit overflows)."""
    p = parameters
    with np.errstate(over="ignore"):
        return float(p["E"] + p["A"] * np.exp(-p["alpha"] * np.log(n)) + p["B"] * np.exp(-p["beta"] * np.log(d)))
