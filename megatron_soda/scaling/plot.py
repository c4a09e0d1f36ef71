"""Figures of a study (matplotlib, Agg: no display needed): plots/isoflop.png (each budget's runs, its parabola
and minimum), plots/frontier.png (N* and D* against C with the fitted laws and their bootstrap bands), and
plots/curves.png (every run's training loss, its final validation loss marked)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np

from megatron_soda.scaling.fit import N_CONVENTIONS, interval
from megatron_soda.scaling.study import Study
from megatron_soda.training.logger import read_metrics


@dataclass
class PlotConfig:
    """``tools/isoflop.py plot``."""

    output_dir: str
    """the study directory: reads results.json, fit.json and the runs' metrics, writes plots/*.png."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(plt, count: int):
    return plt.get_cmap("viridis")(np.linspace(0.0, 0.9, max(count, 1)))


def plot_isoflops(plt, results: Dict[str, Any], fit: Dict[str, Any], path) -> None:
    n_key = N_CONVENTIONS[fit["settings"]["parameters"]][0]
    loss_key = f"loss_{fit['settings']['loss']}"
    budgets = fit["approach2"]["budgets"]
    figure, axes = plt.subplots(figsize=(7, 5))
    for color, b in zip(_colors(plt, len(budgets)), budgets):
        runs = [r for r in results["runs"] if r["budget"] == b["budget"]]
        n = np.array([r[n_key] for r in runs], dtype=float)
        axes.scatter(n, [r[loss_key] for r in runs], color=color, s=18)
        grid = np.linspace(np.log(n.min()) - 0.2, np.log(n.max()) + 0.2, 100)
        axes.plot(np.exp(grid), np.polyval(b["parabola_ln_n"], grid), color=color, label=f"C = {b['C']:.2g}")
        axes.scatter([b["N_opt"]], [b["loss_opt"]], color=color, marker="*", s=120, edgecolor="black", zorder=3)
    axes.set_xscale("log")
    axes.set_xlabel(fit["conventions"]["N"])
    axes.set_ylabel(fit["conventions"]["loss"])
    axes.set_title("IsoFLOP parabolas (stars: minima N*)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_frontiers(plt, fit: Dict[str, Any], path) -> None:
    two = fit["approach2"]
    c = np.array([b["C"] for b in two["budgets"]])
    grid = np.exp(np.linspace(np.log(c.min()) - 0.5, np.log(c.max()) + 1.0, 100))
    figure, panels = plt.subplots(1, 2, figsize=(11, 4.5))
    replicates = two["bootstrap"]["replicates"]
    level = fit["settings"]["confidence"]
    for axes, key, label in zip(panels, ("N_opt", "D_opt"), ("N*", "D*")):
        law = two[key]
        axes.scatter(c, [b[key] for b in two["budgets"]], color="black", zorder=3, label="per-budget optima")
        axes.plot(
            grid,
            law["coefficient"] * grid ** law["exponent"],
            label=f"{label} = {law['coefficient']:.3g} C^{law['exponent']:.3f}",
        )
        samples = np.array(replicates[key]).reshape(-1, 2)
        if len(samples):
            curves = np.exp(samples[:, :1] + samples[:, 1:] * np.log(grid)[None, :])
            band = np.array([interval(curves[:, j], level) for j in range(len(grid))])
            axes.fill_between(grid, band[:, 0], band[:, 1], alpha=0.25, label=f"{100 * level:g}% bootstrap band")
        if fit.get("parametric", {}).get("identifiable"):
            exponent = fit["parametric"][f"{key}_exponent"]
            anchor = law["coefficient"] * c[0] ** law["exponent"]
            axes.plot(grid, anchor * (grid / c[0]) ** exponent, "--", label=f"approach 3 slope C^{exponent:.3f}")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel(fit["conventions"]["C"])
        axes.set_ylabel(fit["conventions"]["N"] if key == "N_opt" else "D* (tokens)")
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_curves(plt, study: Study, results: Dict[str, Any], path) -> None:
    budgets = sorted({r["budget"] for r in results["runs"]})
    colors = dict(zip(budgets, _colors(plt, len(budgets))))
    figure, axes = plt.subplots(figsize=(7, 5))
    for run in results["runs"]:
        records = read_metrics(str(study.metrics(run["name"])))
        training = [r for r in records if "lm loss" in r and "iteration" in r]
        per_iteration = run["tokens"] / run["train_iters"]
        axes.plot(
            [r["iteration"] * per_iteration for r in training],
            [r["lm loss"] for r in training],
            color=colors[run["budget"]],
            alpha=0.4
            + 0.6 * (run["width"] == max(x["width"] for x in results["runs"] if x["budget"] == run["budget"])),
            linewidth=1,
        )
        axes.scatter([run["tokens"]], [run["loss_lm"]], color=colors[run["budget"]], s=14, marker="o")
    for budget in budgets:
        axes.plot([], [], color=colors[budget], label=f"forward budget {budget:.2g}")
    axes.set_xscale("log")
    axes.set_xlabel("tokens")
    axes.set_ylabel("training loss (dots: final validation loss)")
    axes.set_title("Loss curves of every run")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_study(config: PlotConfig) -> List[str]:
    """Draws the three figures into plots/; returns their paths."""
    study = Study(config.output_dir)
    results = study.read(study.results_json, "collect")
    fit = study.read(study.fit_json, "fit")
    plt = _pyplot()
    study.plots.mkdir(parents=True, exist_ok=True)
    paths = [study.plots / name for name in ("isoflop.png", "frontier.png", "curves.png")]
    plot_isoflops(plt, results, fit, paths[0])
    plot_frontiers(plt, fit, paths[1])
    plot_curves(plt, study, results, paths[2])
    return [str(p) for p in paths]
