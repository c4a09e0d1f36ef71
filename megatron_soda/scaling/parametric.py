"""Chinchilla's approach 3: L(N, D) = E + A / N^alpha + B / D^beta, fitted to every run at once.

As Hoffmann et al. (2022, appendix D.2): minimize the Huber loss (delta 1e-3) between log L and
log L_hat = LSE(a - alpha log N, b - beta log D, e), with A = e^a, B = e^b, E = e^e, from a grid of starts,
keeping the best. The minimizer is a damped Gauss-Newton (Levenberg-Marquardt) on the Huber loss's
iteratively reweighted least squares, vectorised over all starts (and bootstrap resamples) with numpy: no
scipy needed. Under C = k N D the compute-optimal split is N_opt ~ C^(beta / (alpha + beta)) and
D_opt ~ C^(alpha / (alpha + beta)).

The parameters are kept inside ``BOUNDS`` (the coefficients as logs, the exponents in [0, 3]; E below the
smallest loss), so a fit to few or uninformative runs cannot run off to overflowing coefficients. Such a fit is
reported as not identifiable, with why, in place of its numbers: fewer runs than parameters + 1, a best fit
that ran to a bound, parameters the runs cannot tell apart (a near-singular Jacobian), or an exponent whose
standard error is over half its value.

The intervals come from a residual bootstrap: the best fit's log-loss residuals (centred, scaled by
sqrt(n / (n - 5)) for the fitted parameters) are resampled onto its predictions and the law refitted, from the
full fit's four best distinct optima. Every run stays in every resample, so it works at three runs per budget.
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
BOUNDS = {"e": (-10.0, None), "a": (-20.0, 40.0), "b": (-20.0, 40.0), "alpha": (0.0, 3.0), "beta": (0.0, 3.0)}
"""Box the minimizer keeps every parameter in; e's upper bound (None) is ln of the smallest loss."""
MAX_CONDITION = 1e8
"""Above this condition number of the (column-scaled) Jacobian at the best fit, the runs do not pin the five
parameters down: the fit is reported as not identifiable."""
MAX_RELATIVE_ERROR = 0.5
"""An exponent whose Gauss-Newton standard error at the best fit exceeds this share of its value is not
told apart from 0 (or from twice itself) by the runs: the fit is reported as not identifiable."""
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


def _bounds(log_l: np.ndarray) -> tuple:
    """(lower, upper) over ``PARAMETERS`` ([5], or [P, 5] for log-losses ``log_l`` [P, n]: e stays below the
    smallest log-loss of its row)."""
    lower = np.array([BOUNDS[name][0] for name in PARAMETERS])
    upper = np.array([np.inf if BOUNDS[name][1] is None else BOUNDS[name][1] for name in PARAMETERS])
    upper = np.broadcast_to(upper, log_l.shape[:-1] + upper.shape).copy()
    upper[..., PARAMETERS.index("e")] = np.min(log_l, axis=-1)
    return lower, upper


def _jacobian(soft: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    return np.stack([soft[..., 2], soft[..., 0], soft[..., 1], -soft[..., 0] * log_n, -soft[..., 1] * log_d], axis=-1)


def minimize(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, weights: np.ndarray, steps: int = 300
):
    """Minimises the weighted Huber objective from each row of ``theta`` [P, 5] inside ``BOUNDS`` (``weights``
    [P, n]: run multiplicities; ``log_l`` [n] or [P, n]); returns the parameters and objectives reached."""
    with np.errstate(over="ignore", invalid="ignore"):  # a rejected trial step may overflow; it is discarded
        return _minimize(theta, log_n, log_d, log_l, weights, steps)


def _minimize(theta, log_n, log_d, log_l, weights, steps):
    lower, upper = _bounds(log_l)
    theta = np.clip(theta.astype(np.float64), lower, upper)
    damping = np.full(theta.shape[0], 1e-3)
    predicted, _ = _predict(theta, log_n, log_d)
    objective = _huber(predicted - log_l, weights)
    for _ in range(steps):
        predicted, soft = _predict(theta, log_n, log_d)
        residual = predicted - log_l
        jacobian = _jacobian(soft, log_n, log_d)
        irls = weights * np.minimum(1.0, HUBER_DELTA / np.maximum(np.abs(residual), 1e-300))
        gradient = np.einsum("pn,pnk->pk", irls * residual, jacobian)
        hessian = np.einsum("pn,pnk,pnl->pkl", irls, jacobian, jacobian)
        diagonal = np.einsum("pkk->pk", hessian)
        system = hessian + (damping[:, None] * (diagonal + 1e-12))[:, :, None] * np.eye(5)
        step = np.linalg.solve(system, gradient[..., None])[..., 0]
        trial = np.clip(theta - step, lower, upper)
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


def identifiability(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> Optional[str]:
    """Why the best fit ``theta`` [5] does not pin the law down (None when it does)."""
    lower, upper = _bounds(log_l)
    for name, value, low, high in zip(PARAMETERS, theta, lower, upper):
        if min(value - low, high - value) < 1e-6 * max(1.0, abs(value)):
            shown = {"e": "ln E", "a": "ln A", "b": "ln B"}.get(name, name)
            return (
                f"{shown} ran to its bound ({value:.4g} in [{low:.4g}, {high:.4g}]): the runs do not pin it down; "
                f"add budgets and model sizes, or use approach 2 alone"
            )
    _, soft = _predict(theta[None], log_n, log_d)
    jacobian = _jacobian(soft[0], log_n, log_d)
    scale = np.linalg.norm(jacobian, axis=0)
    singular = np.linalg.svd(jacobian / np.where(scale > 0, scale, 1.0), compute_uv=False)
    condition = singular[0] / singular[-1] if singular[-1] > 0 else np.inf
    if not condition < MAX_CONDITION:
        return (
            f"the runs cannot tell the five parameters apart (Jacobian condition number {condition:.3g} > "
            f"{MAX_CONDITION:.0e}); add budgets and model sizes, or use approach 2 alone"
        )
    predicted, _ = _predict(theta[None], log_n, log_d)
    residual = log_l - predicted[0]
    variance = residual @ residual / (log_n.size - len(PARAMETERS))
    error = np.sqrt(np.maximum(variance * np.diag(np.linalg.pinv(jacobian.T @ jacobian)), 0.0))
    for name in ("alpha", "beta"):
        i = PARAMETERS.index(name)
        if error[i] > MAX_RELATIVE_ERROR * theta[i]:
            return (
                f"{name} = {theta[i]:.3g} +- {error[i]:.2g} (standard error): the runs do not pin it down; add "
                f"budgets and model sizes, or use approach 2 alone"
            )
    return None


def fit_parametric(log_n: np.ndarray, log_d: np.ndarray, loss: np.ndarray, samples: int = 0, seed: int = 0):
    """The best fit from every start and, with ``samples`` > 0, its residual bootstrap (module docstring).

    Returns ``runs`` and either ``identifiable: False`` with ``reason``, or the parameters (``E, A, B, alpha,
    beta``), the objective, and the resampled parameters as rows of (e, a, b, alpha, beta) (``bootstrap``)."""
    runs = log_n.size
    if runs < len(PARAMETERS) + 1:
        return {
            "runs": runs,
            "identifiable": False,
            "reason": f"{runs} runs for {len(PARAMETERS)} parameters; the fit needs at least {len(PARAMETERS) + 1}",
        }
    log_l = np.log(loss)
    starts = _starts()  # a short descent from every start, then the most promising ones to convergence
    theta, objective = minimize(starts, log_n, log_d, log_l, np.ones((len(starts), runs)), steps=40)
    theta = theta[np.argsort(objective)[:REFINED]]
    theta, objective = minimize(theta, log_n, log_d, log_l, np.ones((len(theta), runs)))
    order = np.argsort(objective)
    best = theta[order[0]]
    reason = identifiability(best, log_n, log_d, log_l)
    if reason is not None:
        return {"runs": runs, "identifiable": False, "reason": reason}
    result: Dict[str, Any] = {
        "runs": runs,
        "identifiable": True,
        "parameters": _as_dict(best),
        "objective": float(objective[order[0]]),
    }
    if samples <= 0:
        return result
    _, first = np.unique(np.round(theta[order], 4), axis=0, return_index=True)
    seeds = theta[order][np.sort(first)[:4]]
    predicted, _ = _predict(best[None], log_n, log_d)
    residual = log_l - predicted[0]
    residual = (residual - residual.mean()) * np.sqrt(runs / (runs - len(PARAMETERS)))
    rng = np.random.default_rng(seed)
    resampled = predicted[0] + residual[rng.integers(0, runs, (samples, runs))]  # [samples, runs]
    theta_b, objective_b = minimize(
        np.tile(seeds, (samples, 1)),
        log_n,
        log_d,
        np.repeat(resampled, len(seeds), axis=0),
        np.ones((samples * len(seeds), runs)),
        steps=100,
    )
    objective_b = objective_b.reshape(samples, len(seeds))
    result["bootstrap"] = theta_b.reshape(samples, len(seeds), 5)[np.arange(samples), objective_b.argmin(axis=1)]
    return result


def loss_at(parameters: Dict[str, float], n: float, d: float) -> float:
    """L(N, D) under fitted ``parameters`` (inf, not an error, where a wild fit overflows)."""
    p = parameters
    with np.errstate(over="ignore"):
        return float(p["E"] + p["A"] * np.exp(-p["alpha"] * np.log(n)) + p["B"] * np.exp(-p["beta"] * np.log(d)))
