"""``fit``: a study's results -> approach 2 (+ bootstrap), approach 3 (+ bootstrap), predictions; fit.json and a
printed table that names the N and C conventions of every figure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np

from megatron_soda.scaling import fit as approach
from megatron_soda.scaling.fit import C_CONVENTIONS, N_CONVENTIONS, FitSettings, interval
from megatron_soda.scaling.parametric import PARAMETERS, fit_parametric
from megatron_soda.scaling.predict import family_shapes, predictions
from megatron_soda.scaling.study import Study, write_json

ROUGH_BELOW = 5
"""Bootstrap intervals resting on fewer residual degrees of freedom are flagged as rough in the table."""


@dataclass
class FitConfig:
    """``tools/isoflop.py fit``."""

    output_dir: str
    """the study directory: reads results.json (collect), writes fit.json."""
    settings: FitSettings = field(default_factory=FitSettings)


def _law(law: tuple, samples: np.ndarray, confidence: float) -> Dict[str, Any]:
    log_coefficient, exponent = law
    return {
        "coefficient": float(np.exp(log_coefficient)),
        "exponent": exponent,
        "exponent_interval": interval(samples[:, 1], confidence) if len(samples) else None,
        "coefficient_interval": [float(np.exp(v)) for v in interval(samples[:, 0], confidence)]
        if len(samples)
        else None,
    }


def _parametric(obs: approach.Observations, settings: FitSettings) -> Dict[str, Any]:
    """Approach 3 with its residual-bootstrap intervals, or why the runs do not identify it."""
    form = "L(N, D) = E + A / N^alpha + B / D^beta (Huber on log L, delta 1e-3)"
    parametric = fit_parametric(obs.log_n, obs.log_d, obs.loss, settings.bootstrap, settings.bootstrap_seed)
    if not parametric["identifiable"]:
        return {**parametric, "form": form}
    samples = parametric.pop("bootstrap", np.zeros((0, 5)))
    p = parametric["parameters"]
    columns = dict(zip(PARAMETERS, samples.T)) if len(samples) else {}
    transformed = {"E": "e", "A": "a", "B": "b"}
    intervals = {}
    for name in ("E", "A", "B", "alpha", "beta"):
        values = columns.get(transformed.get(name, name), np.zeros(0))
        values = np.exp(values) if name in transformed else values
        intervals[name] = interval(values, settings.confidence)
    a, b = p["alpha"], p["beta"]
    with np.errstate(invalid="ignore", divide="ignore"):
        split = (columns["beta"] / (columns["alpha"] + columns["beta"])) if columns else np.zeros(0)
    split = split[np.isfinite(split)]
    parametric.update(
        parameters={name: float(value) for name, value in p.items()},
        intervals=intervals,
        N_opt_exponent=b / (a + b),
        D_opt_exponent=a / (a + b),
        N_opt_exponent_interval=interval(split, settings.confidence),
        D_opt_exponent_interval=interval(1 - split, settings.confidence),
        bootstrap={"method": "residuals of log L about the best fit", "samples": len(samples)},
        form=form,
    )
    return parametric


def fit_results(results: Dict[str, Any], settings: FitSettings) -> Dict[str, Any]:
    """Every fit of a results table (``collect``'s output) under ``settings``."""
    obs = approach.observations(results["runs"], settings)
    two = approach.approach2(obs, settings.k)
    boot = approach.bootstrap_approach2(obs, settings.k, settings.bootstrap, settings.bootstrap_seed)
    k_text = (
        f"D* = C / ({settings.k:g} N*)"
        if settings.k
        else "D* = C / (k N*), k = the budget's C / (N D) at N* (the tokens the optimal run trains on)"
    )
    out: Dict[str, Any] = {
        "conventions": {
            "N": N_CONVENTIONS[settings.parameters][1],
            "C": C_CONVENTIONS[settings.flops][1],
            "D": "tokens trained on",
            "k": k_text,
            "loss": f"final validation {settings.loss} loss",
        },
        "settings": vars(settings),
        "approach2": {
            "budgets": two["budgets"],
            **{
                key: _law(two["laws"][key], boot["laws"][key], settings.confidence)
                for key in ("N_opt", "D_opt", "loss_opt")
            },
            "bootstrap": {
                "method": boot["method"],
                "description": approach.BOOTSTRAP_METHODS[boot["method"]],
                "degrees_of_freedom": boot["degrees_of_freedom"],
                "samples": len(boot["laws"]["N_opt"]),
                "discarded": boot["discarded"],
                "seed": settings.bootstrap_seed,
                "replicates": {key: value.tolist() for key, value in boot["laws"].items()},
            },
        },
    }
    parametric = None
    if settings.parametric:
        out["parametric"] = _parametric(obs, settings)
        if out["parametric"]["identifiable"]:
            parametric = out["parametric"]
    if settings.predict:
        shapes = family_shapes(
            results["family_shape"], results["vocab_size"], results["seq_length"], settings.parameters, settings.flops
        )
        out["predictions"] = predictions(settings.predict, two, parametric, shapes, boot["laws"], settings.confidence)
    return out


def run_fit(config: FitConfig) -> Dict[str, Any]:
    """Fits ``results.json`` of the study; writes fit.json; returns its content."""
    study = Study(config.output_dir)
    out = fit_results(study.read(study.results_json, "collect"), config.settings)
    write_json(study.fit_json, out)
    return out


def _span(values) -> str:
    return f"[{values[0]:.3g}, {values[1]:.3g}]" if values else "(no bootstrap)"


def fit_table(fit: Dict[str, Any]) -> List[str]:
    """fit.json as lines a person reads."""
    c, two = fit["conventions"], fit["approach2"]
    lines = [f"{c['N']}; {c['C']}; {c['k']}; {c['loss']}", "", "approach 2: per-budget optima"]
    lines.append(f"  {'budget':>9} {'C':>10} {'runs':>4} {'N*':>10} {'D*':>10} {'k':>6} {'loss*':>7}")
    for b in two["budgets"]:
        edge = "" if b["inside_range"] else "  (N* outside the runs' range)"
        lines.append(
            f"  {b['budget']:>9.3g} {b['C']:>10.3g} {b['runs']:>4} {b['N_opt']:>10.3g} {b['D_opt']:>10.3g} "
            f"{b['k']:>6.2f} {b['loss_opt']:>7.4f}{edge}"
        )
    boot = two["bootstrap"]
    level = f"{100 * fit['settings']['confidence']:g}%"
    if boot["method"] == "none":
        lines.append(f"  power laws ({boot['description']}):")
    else:
        discarded = f", {boot['discarded']} discarded" if boot["discarded"] else ""
        lines.append(
            f"  power laws ({level} intervals, {boot['description']}: {boot['samples']} resamples{discarded}):"
        )
        if boot["degrees_of_freedom"] < ROUGH_BELOW:
            lines.append(
                f"    (the residuals have {boot['degrees_of_freedom']} degree(s) of freedom: the intervals are rough "
                f"and likely too narrow; more budgets, or more runs per budget, firm them up)"
            )
    for key, name in (("N_opt", "N*"), ("D_opt", "D*"), ("loss_opt", "loss*")):
        law = two[key]
        span = _span(law["exponent_interval"])
        lines.append(f"    {name:<6} = {law['coefficient']:.4g} C^{law['exponent']:.4f}   exponent {span}")
    p = fit.get("parametric")
    if p is not None and not p["identifiable"]:
        lines += ["", f"approach 3: {p['form']}", f"    not identifiable from {p['runs']} runs: {p['reason']}"]
    elif p is not None:
        q, i = p["parameters"], p["intervals"]
        lines += ["", f"approach 3: {p['form']} ({p['bootstrap']['method']} bootstrap)"]
        for name in ("E", "A", "B", "alpha", "beta"):
            lines.append(f"    {name:<6} = {q[name]:.4g}   {_span(i[name])}")
        lines.append(
            f"    N_opt ~ C^{p['N_opt_exponent']:.4f} {_span(p['N_opt_exponent_interval'])}, "
            f"D_opt ~ C^{p['D_opt_exponent']:.4f} {_span(p['D_opt_exponent_interval'])}"
        )
    for entry in fit.get("predictions", []):
        lines += ["", f"prediction at C = {entry['C']:.3g}:"]
        for name in ("approach2", "parametric"):
            if name not in entry:
                continue
            e, s = entry[name], entry[name]["shape"]
            edge = " (at the edge of the family's widths)" if s["at_family_edge"] else ""
            lines.append(
                f"    {name:<10} N* {e['N_opt']:.4g}  D* {e['D_opt']:.4g}  loss {e['loss_opt']:.4f}  -> width "
                f"{s['width']}, {s['num_layers']} layers, {s['num_attention_heads']} heads, "
                f"{s['parameters_total']:,} parameters total, {s['tokens_for_budget']:.4g} tokens{edge}"
            )
    return lines
