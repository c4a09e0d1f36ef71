"""SODA's "approach 2": per budget a parabola of loss in log N, its minimum N*(C); D*(C); then power laws
N* = a C^alpha and D* = b C^beta by least squares in log-log, with bootstrap intervals.

Which N and which C are settings, and every output names them (``conventions``): N is the total parameter
count (embeddings + LM head, as SODA fits) or the non-embedding count; C is training FLOPs (3 x forward with
attention and LM head: the budgets' own convention, the paper's 3e18..3e20) or 6ND (N non-embedding). Within
a budget the runs' C, and their tokens per parameter, vary a little with the shape; both are read at N* from a
least-squares line through the budget's runs in log N (exact where they are constant). D* = C / (k N*): with
``k`` unset, k is the budget's own C / (N D) read at N* the same way, i.e. the tokens the optimal run would
train on; ``--k 6`` gives Chinchilla's D* = C / (6 N*) instead.

The intervals come from a residual bootstrap (seeded): each resample adds resampled residuals to fitted values
and refits, so it keeps every budget and every model size. Which residuals depends on what the runs leave:

- ``parabola residuals`` when the budgets' parabolas leave at least one residual degree of freedom per budget
  (runs beyond three, pooled): each budget's losses become its parabola's fitted values plus residuals drawn
  from all budgets' (leverage-corrected, centred) residuals; every parabola, optimum and law is refitted. A
  resample whose parabola is not convex is discarded and counted.
- ``frontier residuals`` otherwise (three runs per budget pass exactly through their parabola and leave no
  residual): the optima's residuals about the power laws (leverage-corrected, centred; one budget's residuals
  drawn together for N*, D* and loss*) are added to the laws' fitted values and the laws refitted. This needs
  at least three budgets; with two there is no bootstrap, and the output says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from megatron_soda.flags import flag

N_CONVENTIONS = {
    "total": ("parameters", "N = total parameters (embeddings + LM head)"),
    "non-embedding": ("non_embedding_parameters", "N = non-embedding parameters"),
}
C_CONVENTIONS = {
    "training": ("flops_training", "C = training FLOPs = 3 x forward FLOPs with attention and LM head"),
    "6nd": ("flops_6nd", "C = 6 x non-embedding parameters x tokens"),
}


@dataclass
class FitSettings:
    """What to fit, and how."""

    parameters: str = field(default="total", metadata=flag(choices=tuple(N_CONVENTIONS)))
    """N in the fits: total (embeddings + LM head, as SODA) or non-embedding."""
    flops: str = field(default="training", metadata=flag(choices=tuple(C_CONVENTIONS)))
    """C in the fits: training (3 x forward with attention and LM head) or 6nd (6 x non-embedding N x D)."""
    loss: str = field(default="lm", metadata=flag(choices=("lm", "audio", "text")))
    """the final validation loss to fit: overall (lm), or of audio or text tokens only."""
    k: Optional[float] = None
    """D* = C / (k N*) with this k (6: Chinchilla's); default: each budget's own C / (N D), read at N*."""
    bootstrap: int = 1000
    """bootstrap resamples for the intervals (0: none)."""
    bootstrap_seed: int = 0
    """the bootstrap's seed."""
    confidence: float = 0.95
    """the intervals' coverage (percentile bootstrap)."""
    predict: Optional[List[float]] = field(default=None, metadata=flag(nargs="+"))
    """budgets C (in the --flops convention) to predict the compute-optimal shape, tokens and loss for."""
    exclude_budgets: Optional[List[float]] = field(default=None, metadata=flag(nargs="+"))
    """leave these (forward-FLOP, as planned) budgets out of the fits."""
    parametric: bool = True
    """also fit Chinchilla's approach 3, L(N, D) = E + A/N^a + B/D^b."""


@dataclass
class Observations:
    """The runs as the fits see them (natural logs), grouped by planned budget."""

    budget: np.ndarray
    """Planned forward-FLOP budget of each run: the grouping key."""
    log_n: np.ndarray
    log_d: np.ndarray
    log_c: np.ndarray
    loss: np.ndarray
    names: List[str]

    def groups(self) -> Dict[float, np.ndarray]:
        """Run indices of each budget, budgets ascending."""
        return {float(b): np.flatnonzero(self.budget == b) for b in sorted(set(self.budget.tolist()))}


def observations(rows: Sequence[Dict[str, Any]], settings: FitSettings) -> Observations:
    """The fit's view of result rows (``collect``), in the settings' conventions; refuses a missing loss."""
    loss_key = f"loss_{settings.loss}"
    excluded = set(settings.exclude_budgets or ())
    rows = [row for row in rows if row["budget"] not in excluded]
    missing = [row["name"] for row in rows if row.get(loss_key) is None]
    if missing:
        raise ValueError(f"--loss {settings.loss}: no validation {settings.loss} loss in runs {', '.join(missing)}")
    n_key, c_key = N_CONVENTIONS[settings.parameters][0], C_CONVENTIONS[settings.flops][0]
    column = lambda key: np.array([float(row[key]) for row in rows])  # noqa: E731
    return Observations(
        column("budget"),
        np.log(column(n_key)),
        np.log(column("tokens")),
        np.log(column(c_key)),
        column(loss_key),
        [row["name"] for row in rows],
    )


class FitError(ValueError):
    """A budget (or the study) the fit cannot use, with why and what to do."""


def _line_at(x: np.ndarray, y: np.ndarray, at: float) -> float:
    """The least-squares line of y on x, evaluated at ``at`` (the mean of y where x does not vary)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float(np.mean(y))
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept + slope * at)


def budget_optimum(obs: Observations, index: np.ndarray, k: Optional[float], budget: float) -> Dict[str, float]:
    """The parabola of one budget's runs and its minimum; FitError if it has none."""
    log_n, loss = obs.log_n[index], obs.loss[index]
    names = [obs.names[i] for i in index]
    if len(np.unique(log_n)) < 3:
        raise FitError(
            f"budget {budget:.3g}: {len(np.unique(log_n))} distinct model sizes ({', '.join(names)}); a parabola "
            f"of loss in log N needs at least three runs of different N. Add runs at that budget or leave it "
            f"out with --exclude-budgets {budget:.3g}"
        )
    curvature, slope, intercept = np.polyfit(log_n, loss, 2)
    if curvature <= 0:
        raise FitError(
            f"budget {budget:.3g}: loss is not convex in log N over runs {', '.join(names)} (curvature "
            f"{curvature:.3g}), so it has no minimum; add runs on both sides of the best one or leave it out "
            f"with --exclude-budgets {budget:.3g}"
        )
    log_n_opt = -slope / (2 * curvature)
    log_c = _line_at(log_n, obs.log_c[index], log_n_opt)
    if k is None:
        log_d = _line_at(log_n, obs.log_d[index], log_n_opt)
    else:
        log_d = log_c - np.log(k) - log_n_opt
    return {
        "budget": budget,
        "runs": len(index),
        "C": float(np.exp(log_c)),
        "N_opt": float(np.exp(log_n_opt)),
        "D_opt": float(np.exp(log_d)),
        "k": float(np.exp(log_c - log_d - log_n_opt)),
        "loss_opt": float(intercept - slope**2 / (4 * curvature)),
        "parabola_ln_n": [float(curvature), float(slope), float(intercept)],
        "inside_range": bool(log_n.min() <= log_n_opt <= log_n.max()),
    }


def power_law(log_c: np.ndarray, log_y: np.ndarray) -> tuple:
    """(ln coefficient, exponent) of y = coefficient x C^exponent by least squares in log-log."""
    exponent, log_coefficient = np.polyfit(log_c, log_y, 1)
    return float(log_coefficient), float(exponent)


LAWS = ("N_opt", "D_opt", "loss_opt")
"""The fitted power laws, each ~ C^exponent."""


def _laws(optima: List[Dict[str, float]]) -> Dict[str, tuple]:
    log_c = np.log([o["C"] for o in optima])
    return {key: power_law(log_c, np.log([o[key] for o in optima])) for key in LAWS}


def approach2(obs: Observations, k: Optional[float] = None) -> Dict[str, Any]:
    """Per-budget optima and the three power laws (N*, D*, and the optimal loss, all ~ C^x)."""
    groups = obs.groups()
    if len(groups) < 2:
        raise FitError(f"{len(groups)} budget(s) to fit; power laws in C need at least two (three to mean much)")
    optima = [budget_optimum(obs, index, k, budget) for budget, index in groups.items()]
    return {"budgets": optima, "laws": _laws(optima)}


BOOTSTRAP_METHODS = {
    "parabola residuals": "residual bootstrap of the per-budget parabolas (residuals pooled over budgets)",
    "frontier residuals": "residual bootstrap of the power laws (the optima's residuals about each law)",
    "none": "no bootstrap (it needs --bootstrap > 0, and three budgets or more than three runs per budget)",
}


def _adjusted_residuals(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares residuals of ``y`` on ``design`` divided by sqrt(1 - leverage), so that resampling them
    keeps the noise's variance; points the fit passes through (leverage 1) leave none."""
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coefficients
    leverage = np.einsum("ij,ji->i", design, np.linalg.pinv(design))
    keep = leverage < 1 - 1e-9
    return residual[keep] / np.sqrt(1 - leverage[keep])


def bootstrap_method(obs: Observations) -> tuple:
    """Which residual bootstrap the runs allow (see the module's docstring), and the residual degrees of
    freedom it rests on (few: the intervals are rough, and tend to be too narrow)."""
    groups = obs.groups()
    spare = sum(max(0, len(index) - 3) for index in groups.values())
    if spare >= len(groups):
        return "parabola residuals", spare
    return ("frontier residuals", len(groups) - 2) if len(groups) >= 3 else ("none", 0)


def _parabola_resamples(obs, groups, k, samples, rng):
    """Optima of ``samples`` resamples of the losses: parabola fits plus pooled residuals."""
    fitted, pooled = obs.loss.copy(), []
    for index in groups.values():
        design = np.vander(obs.log_n[index], 3)
        fitted[index] = design @ np.linalg.lstsq(design, obs.loss[index], rcond=None)[0]
        pooled.append(_adjusted_residuals(design, obs.loss[index]))
    pool = np.concatenate(pooled)
    pool -= pool.mean()
    out, discarded = [], 0
    for _ in range(samples):
        resample = replace(obs, loss=fitted + rng.choice(pool, size=fitted.size))
        try:
            out.append([budget_optimum(resample, index, k, budget) for budget, index in groups.items()])
        except FitError:
            discarded += 1
    return out, discarded


def bootstrap_approach2(obs: Observations, k: Optional[float], samples: int, seed: int) -> Dict[str, Any]:
    """The power laws refitted on ``samples`` residual-bootstrap resamples (``bootstrap_method``): their
    (ln coefficient, exponent) pairs per law, the method and its residual degrees of freedom, and how many
    resamples were discarded."""
    rng = np.random.default_rng(seed)
    groups = obs.groups()
    method, freedom = bootstrap_method(obs) if samples > 0 else ("none", 0)
    laws: Dict[str, List[tuple]] = {key: [] for key in LAWS}
    discarded = 0
    if method == "parabola residuals":
        resamples, discarded = _parabola_resamples(obs, groups, k, samples, rng)
        for optima in resamples:
            for key, law in _laws(optima).items():
                laws[key].append(law)
    elif method == "frontier residuals":
        optima = [budget_optimum(obs, index, k, budget) for budget, index in groups.items()]
        log_c = np.log([o["C"] for o in optima])
        design = np.vander(log_c, 2)
        log_y = np.log([[o[key] for key in LAWS] for o in optima])  # [budget, law]
        fitted = design @ np.linalg.lstsq(design, log_y, rcond=None)[0]
        residual = np.stack([_adjusted_residuals(design, log_y[:, j]) for j in range(len(LAWS))], axis=1)
        residual -= residual.mean(axis=0)
        for _ in range(samples):
            drawn = fitted + residual[rng.integers(0, len(residual), len(log_c))]
            for j, key in enumerate(LAWS):
                laws[key].append(power_law(log_c, drawn[:, j]))
    return {
        "laws": {key: np.array(value).reshape(-1, 2) for key, value in laws.items()},
        "discarded": discarded,
        "method": method,
        "degrees_of_freedom": freedom,
    }


def interval(values: np.ndarray, confidence: float) -> Optional[List[float]]:
    """The percentile interval of bootstrap ``values`` (None without any)."""
    if len(values) == 0:
        return None
    tail = 50 * (1 - confidence)
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
