"""The whole study in one call (``tools/isoflop.py run``), and the CPU-sized demo on the shipped corpus
(``tools/isoflop.py demo``, ``make isoflop-demo``): plan -> launch -> collect -> fit -> plot."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict

from megatron_soda.flags import flag
from megatron_soda.scaling.collect import CollectConfig, collect
from megatron_soda.scaling.fit import FitSettings
from megatron_soda.scaling.launch import LaunchConfig, LaunchSettings, launch
from megatron_soda.scaling.plan import PlanConfig, PlanSettings, write_plan
from megatron_soda.scaling.plot import PlotConfig, plot_study
from megatron_soda.scaling.report import FitConfig, fit_table, run_fit

CORPUS = Path(__file__).resolve().parents[2] / "data" / "demo_corpus"


@dataclass
class RunConfig:
    """``tools/isoflop.py run``: every stage's settings."""

    output_dir: str
    """the study directory (everything goes there)."""
    plan: PlanSettings = field(default_factory=PlanSettings)
    launch: LaunchSettings = field(default_factory=LaunchSettings)
    fit: FitSettings = field(default_factory=FitSettings)


@dataclass
class DemoConfig:
    """``tools/isoflop.py demo``."""

    output_dir: str = "demo_out/isoflop"
    """where to write: data/ (the corpus preprocessed) and the study."""
    corpus: str = field(default=str(CORPUS), metadata=flag("--input"))
    """the corpus: a directory holding manifest.jsonl and text.jsonl."""
    workers: int = 2
    """audio decoding processes."""
    jobs: int = 1
    """runs at once."""


def run_study(config: RunConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """plan, launch (here or --slurm), then, once every run finished, collect, fit and plot."""
    plan = write_plan(PlanConfig(config.output_dir, config.plan))
    log(f"plan: {len(plan['runs'])} runs in {config.output_dir}")
    launched = launch(LaunchConfig(config.output_dir, config.launch), log)
    if config.launch.slurm:
        return {"plan": len(plan["runs"]), "launch": launched}
    results = collect(CollectConfig(config.output_dir), log)
    fit = run_fit(FitConfig(config.output_dir, config.fit))
    for line in fit_table(fit):
        log(line)
    plots = plot_study(PlotConfig(config.output_dir))
    log(f"plots: {', '.join(plots)}")
    return {"plan": len(plan["runs"]), "launch": launched, "collected": len(results["runs"]), "plots": plots}


def prepare_demo_data(corpus: Path, out: Path, workers: int) -> Dict[str, Any]:
    """The corpus as tools/demo.py prepares it (a BPE + SODA tokenizer, Mimi with random weights at SODA's
    settings, text documents, merged); kept when already made. Returns the tokenizer and --data-path."""
    done = out / "done.json"
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    from megatron_soda.codec import CodecConfig
    from megatron_soda.data.audio_pipeline import AudioPreprocessConfig, preprocess_audio
    from megatron_soda.data.indexed_dataset import merge_datasets
    from megatron_soda.data.text_pipeline import TextPreprocessConfig, preprocess_text
    from megatron_soda.tokenizer import build_soda_tokenizer, save_soda_tokenizer, train_bpe

    texts = [json.loads(line)["text"] for name in ("text.jsonl", "manifest.jsonl") for line in open(corpus / name)]
    save_soda_tokenizer(build_soda_tokenizer(train_bpe(texts, vocab_size=1024)), out / "tokenizer")
    jobs = {
        "speech": preprocess_audio(
            AudioPreprocessConfig(
                inputs=[str(corpus / "manifest.jsonl")],
                output_dir=str(out / "speech_job"),
                tokenizer=str(out / "tokenizer"),
                codec=CodecConfig(name="mimi", random_init=True),
                documents_per_shard=10,
                workers=workers,
                progress=False,
            )
        ),
        "text": preprocess_text(
            TextPreprocessConfig(
                inputs=[str(corpus / "text.jsonl")],
                output_dir=str(out / "text_job"),
                tokenizer=str(out / "tokenizer"),
                progress=False,
            )
        ),
    }
    for name, job in jobs.items():
        shards = [out / f"{name}_job" / "shards" / f"tokens_{i:05d}" for i in range(job["shards"])]
        merge_datasets(out / name, shards, progress=False)
    made = {
        "tokenizer": str(out / "tokenizer"),
        "data_path": ["0.95", str(out / "speech"), "0.05", str(out / "text")],
    }
    done.write_text(json.dumps(made), encoding="utf-8")
    return made


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """The CPU family's study (3 budgets x widths 32, 64, 96) on the shipped corpus, end to end."""
    out = Path(config.output_dir)
    log("preparing the demo corpus (random-weight Mimi: the tokens mean nothing; the pipeline is real)")
    data = prepare_demo_data(Path(config.corpus), out / "data", config.workers)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // config.jobs)))
    return run_study(
        RunConfig(
            str(out / "study"),
            plan=PlanSettings(
                family="cpu", tokenizer=data["tokenizer"], split="90,10,0", eval_samples=32, micro_batch_size=16
            ),
            launch=LaunchSettings(data_path=data["data_path"], jobs=config.jobs, extra_args="--num-workers 0"),
            fit=FitSettings(predict=[1e13], bootstrap=200),
        ),
        log,
    )
