"""The compute-optimal run for a new budget, from either fit, as a shape of the study's width family.

Approach 2 gives N* and D* from its power laws and the loss from L*(C) = l C^gamma (the per-budget parabola
minima, least squares in log-log); the shape is the family's width whose N is nearest N*. Approach 3
minimises L(N, D) over the family's widths with D = C / (the shape's FLOPs per token in the fit's
C convention), so no k is assumed. Both give the tokens that spend C on the chosen shape.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from megatron_soda.models.isoflop import WidthFamily
from megatron_soda.scaling.parametric import loss_at
from megatron_soda.training.flops import forward_flops_per_token, six_n_flops_per_token

MAX_WIDTH_FACTOR = 16
"""Widths considered: the family's head dim up to 16 x its largest planned width."""


def family_shapes(family: Dict[str, Any], vocab_size: int, seq_length: int, parameters: str, flops: str):
    """Every candidate shape with its N (in the fit's convention) and FLOPs per token (in its C convention)."""
    family = WidthFamily(**family)
    out = []
    for width in range(family.head_dim, MAX_WIDTH_FACTOR * family.max_width + 1, family.head_dim):
        shape = family.shape(width, vocab_size, seq_length)
        n = shape.num_parameters() if parameters == "total" else shape.num_non_embedding_parameters()
        per_token = (
            3 * forward_flops_per_token(shape, seq_length) if flops == "training" else six_n_flops_per_token(shape)
        )
        out.append((shape, n, per_token))
    return out


def _describe(shape, n: float, per_token: float, budget: float) -> Dict[str, Any]:
    return {
        "width": shape.hidden_size,
        "num_layers": shape.num_layers,
        "num_attention_heads": shape.num_attention_heads,
        "parameters_fit_convention": n,
        "parameters_total": shape.num_parameters(),
        "tokens_for_budget": budget / per_token,
    }


def predict_approach2(laws: Dict[str, tuple], shapes: List[tuple], budget: float, bootstrap=None, confidence=0.95):
    """N*, D*, the optimal loss and the nearest shape at ``budget`` (with bootstrap intervals when given)."""
    from megatron_soda.scaling.fit import interval

    log_c = np.log(budget)
    out: Dict[str, Any] = {}
    for key, (log_coefficient, exponent) in laws.items():
        out[key] = float(np.exp(log_coefficient + exponent * log_c))
        if bootstrap is not None and len(bootstrap[key]):
            samples = np.exp(bootstrap[key][:, 0] + bootstrap[key][:, 1] * log_c)
            out[f"{key}_interval"] = interval(samples, confidence)
    shape, n, per_token = min(shapes, key=lambda s: abs(np.log(s[1]) - np.log(out["N_opt"])))
    out["shape"] = _describe(shape, n, per_token, budget)
    out["shape"]["at_family_edge"] = shape.hidden_size in (shapes[0][0].hidden_size, shapes[-1][0].hidden_size)
    return out


def predict_parametric(parameters: Dict[str, float], shapes: List[tuple], budget: float) -> Dict[str, Any]:
    """The family's shape minimising L(N, C / FLOPs per token), its tokens and predicted loss."""
    losses = [loss_at(parameters, n, budget / per_token) for _, n, per_token in shapes]
    best = int(np.argmin(losses))
    shape, n, per_token = shapes[best]
    return {
        "N_opt": float(n),
        "D_opt": budget / per_token,
        "loss_opt": float(losses[best]),
        "shape": {**_describe(shape, n, per_token, budget), "at_family_edge": best in (0, len(shapes) - 1)},
    }


def predictions(
    budgets: List[float],
    approach2: Dict[str, Any],
    parametric: Optional[Dict[str, Any]],
    shapes: List[tuple],
    bootstrap=None,
    confidence: float = 0.95,
) -> List[Dict[str, Any]]:
    out = []
    for budget in budgets:
        entry = {"C": budget, "approach2": predict_approach2(approach2["laws"], shapes, budget, bootstrap, confidence)}
        if parametric is not None:
            entry["parametric"] = predict_parametric(parametric["parameters"], shapes, budget)
        out.append(entry)
    return out
