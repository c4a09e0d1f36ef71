"""The scaling-law fits (megatron_soda/scaling/fit.py, parametric.py, predict.py) on synthetic runs drawn from a
known law L(N, D) = E + A/N^a + B/D^b with noise: both approaches recover its exponents inside their reported
bootstrap intervals, and a budget a parabola cannot be fitted to is refused, saying which and why."""

import numpy as np
import pytest

from megatron_soda.models.isoflop import SODA_FAMILY
from megatron_soda.scaling.fit import FitError, FitSettings, approach2, observations
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
    assert two["bootstrap"]["samples"] + two["bootstrap"]["discarded"] == 200
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
