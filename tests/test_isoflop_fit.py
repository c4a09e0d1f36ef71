"""The scaling-law fits (megatron_soda/scaling/fit.py, parametric.py, predict.py) on synthetic runs drawn from a
known law L(N, D) = E + A/N^a + B/D^b with noise: both approaches recover its exponents inside their reported
bootstrap intervals (also at three runs per budget, where each parabola passes through its runs), a budget a
parabola cannot be fitted to is refused, saying which and why, and a parametric fit the runs cannot pin down
is reported as not identifiable rather than as numbers."""

import warnings

import numpy as np
import pytest

from megatron_soda.models.isoflop import SODA_FAMILY
from megatron_soda.scaling.fit import FitError, FitSettings, approach2, observations
from megatron_soda.scaling.parametric import fit_parametric
from megatron_soda.scaling.report import fit_results, fit_table

E, A, B, ALPHA, BETA = 1.7, 400.0, 1200.0, 0.34, 0.28
N_EXPONENT, D_EXPONENT = BETA / (ALPHA + BETA), ALPHA / (ALPHA + BETA)  # under C = 6ND


def synthetic_runs(budgets=(1e18, 3e18, 1e19, 3e19, 1e20), per_budget=7, noise=0.003, seed=0):
    """Runs around each budget's true optimum (C = 6ND), losses with multiplicative noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        best = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA)) * (c / 6) ** N_EXPONENT
        for x in np.linspace(-0.6, 0.6, per_budget):
            n = best * 10**x
            d = c / (6 * n)
            loss = (E + A / n**ALPHA + B / d**BETA) * np.exp(rng.normal(0, noise))
            rows.append(
                {"name": f"{c:g}-{x:+.1f}", "budget": c, "parameters": n, "non_embedding_parameters": n,
                 "tokens": d, "flops_training": c, "flops_6nd": c, "loss_lm": loss}
            )  # fmt: skip
    return {"runs": rows, "family_shape": vars(SODA_FAMILY), "vocab_size": 144_644, "seq_length": 4096}


@pytest.fixture(scope="module")
def fitted():
    settings = FitSettings(flops="6nd", k=6.0, bootstrap=200, predict=[1e21])
    return fit_results(synthetic_runs(), settings)


def test_approach2_recovers_the_optimal_allocation_exponents_inside_its_intervals(fitted):
    two = fitted["approach2"]
    for key, truth in (("N_opt", N_EXPONENT), ("D_opt", D_EXPONENT)):
        low, high = two[key]["exponent_interval"]
        assert low < truth < high and high - low < 0.1, (key, two[key])
        assert two[key]["exponent"] == pytest.approx(truth, abs=0.02)
    assert all(b["inside_range"] and b["runs"] == 7 for b in two["budgets"])
    assert two["bootstrap"]["method"] == "parabola residuals" and two["bootstrap"]["degrees_of_freedom"] == 20
    assert two["bootstrap"]["samples"] + two["bootstrap"]["discarded"] == 200 and two["bootstrap"]["discarded"] < 5
    assert "6 x non-embedding" in fitted["conventions"]["C"] and "total" in fitted["conventions"]["N"]
    assert "C / (6 N*)" in fitted["conventions"]["k"]


def test_parametric_fit_recovers_the_law_inside_its_intervals(fitted):
    p = fitted["parametric"]
    for name, truth in (("alpha", ALPHA), ("beta", BETA), ("E", E)):
        low, high = p["intervals"][name]
        assert low < truth < high, (name, p["parameters"][name], p["intervals"][name])
    low, high = p["N_opt_exponent_interval"]
    assert low < N_EXPONENT < high


def test_prediction_names_a_shape_its_tokens_and_loss_from_both_approaches(fitted):
    (entry,) = fitted["predictions"]
    truth = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA)) * (1e21 / 6) ** N_EXPONENT
    for name in ("approach2", "parametric"):
        guess = entry[name]
        assert guess["N_opt"] == pytest.approx(truth, rel=0.3) and guess["shape"]["width"] % 128 == 0
        assert guess["shape"]["tokens_for_budget"] > 0 and 1.7 < guess["loss_opt"] < 3
    low, high = entry["approach2"]["N_opt_interval"]
    assert low < entry["approach2"]["N_opt"] < high
    text = "\n".join(fit_table(fitted))
    assert "prediction at C = 1e+21" in text and "approach 3" in text


def test_a_budget_with_fewer_than_three_runs_is_refused_by_name():
    data = synthetic_runs()
    data["runs"] = [
        r for r in data["runs"] if not (r["budget"] == 3e18 and r["name"] not in ("3e+18--0.6", "3e+18-+0.6"))
    ]
    with pytest.raises(FitError, match=r"budget 3e\+18: 2 distinct model sizes .*at least three runs of different N"):
        approach2(observations(data["runs"], FitSettings()))
    fit = fit_results(data, FitSettings(exclude_budgets=[3e18], bootstrap=0, parametric=False))
    assert [b["budget"] for b in fit["approach2"]["budgets"]] == [1e18, 1e19, 3e19, 1e20]


def test_at_three_runs_per_budget_the_bootstrap_keeps_its_resamples_and_its_intervals_contain_the_truth():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the way
        fit = fit_results(synthetic_runs(per_budget=3), FitSettings(flops="6nd", k=6.0, bootstrap=200))
    two, p = fit["approach2"], fit["parametric"]
    boot = two["bootstrap"]
    assert (boot["method"], boot["samples"], boot["discarded"], boot["degrees_of_freedom"]) == (
        "frontier residuals",
        200,
        0,
        3,
    )
    for key, truth in (("N_opt", N_EXPONENT), ("D_opt", D_EXPONENT)):
        low, high = two[key]["exponent_interval"]
        assert np.isfinite([low, high]).all() and 0.005 < high - low < 0.2 and low < truth < high, (key, two[key])
    assert p["identifiable"] and p["bootstrap"]["samples"] == 200
    for name, truth in (("alpha", ALPHA), ("beta", BETA)):
        low, high = p["intervals"][name]
        assert 0 < high - low < 0.5 and low < truth < high, (name, p["intervals"][name])
    low, high = p["N_opt_exponent_interval"]
    assert low < N_EXPONENT < high
    text = "\n".join(fit_table(fit))
    assert "residual bootstrap of the power laws" in text and "3 degree(s) of freedom" in text


def test_a_parametric_fit_the_runs_cannot_pin_down_is_reported_not_identifiable_without_numbers():
    runs = synthetic_runs(budgets=(1e18,), per_budget=5)["runs"]
    log_n, log_d = np.log([r["parameters"] for r in runs]), np.log([r["tokens"] for r in runs])
    fit = fit_parametric(log_n, log_d, np.array([r["loss_lm"] for r in runs]), samples=10)
    assert fit == {"runs": 5, "identifiable": False, "reason": "5 runs for 5 parameters; the fit needs at least 6"}
    # two budgets of a loss that is a parabola in log N, no Chinchilla law at all: bounded, no overflow, refused
    data = synthetic_runs(budgets=(3e9, 6e9), per_budget=3)
    for r in data["runs"]:
        r["loss_lm"] = 5 + (np.log(r["parameters"]) - np.log(2e6)) ** 2 - 1e-12 * r["budget"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_results(data, FitSettings(bootstrap=20, predict=[1e21]))
    assert fit["parametric"]["identifiable"] is False and "parameters" not in fit["parametric"]
    assert any(why in fit["parametric"]["reason"] for why in ("ran to its bound", "cannot tell", "standard error"))
    assert fit["approach2"]["bootstrap"]["method"] == "none" and "parametric" not in fit["predictions"][0]
    text = "\n".join(fit_table(fit))
    assert "not identifiable from 6 runs" in text and "no bootstrap" in text
