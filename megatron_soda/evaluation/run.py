"""One evaluation: a model (our checkpoint or a Hugging Face export) on chosen tasks, each reading its
public data from a local path, reported as ``report.json`` plus per-item side files.
``tools/evaluate.py`` is its command line."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from megatron_soda.checks import check_at_least, check_dir, check_exists, check_output_dir
from megatron_soda.codec.cli import CodecConfig, check_codec
from megatron_soda.flags import flag
from megatron_soda.inference.model_source import ModelSource
from megatron_soda.inference.s2st import TranslationSampling
from megatron_soda.tool_json import check_json_path


def _registry():
    """Every task, registered by importing the modules that define them."""
    from megatron_soda.evaluation import generation_tasks, likelihood_tasks, s2st_task  # noqa: F401
    from megatron_soda.evaluation.base import REGISTRY

    return REGISTRY


@dataclass
class EvaluateConfig:
    """What ``tools/evaluate.py`` runs; its fields are the tool's flags."""

    tasks: List[str] = field(default_factory=list, metadata=flag(nargs="+"))
    """tasks to run: swuggy sblimp salmon twuggy tblimp hellaswag asr tts s2st."""
    input: List[str] = field(default_factory=list, metadata=flag(nargs="+", metavar="KEY=PATH"))
    """each task's data: KEY=PATH with KEY one of swuggy (sWUGGY, also tWUGGY's), sblimp (also tBLIMP's),
    salmon, hellaswag, asr (LibriSpeech-style JSONL manifest), tts (Seed-TTS-style list), s2st (CVSS-style
    JSONL: source_audio, source_language, source_text, target_text); PATH a local Hugging Face dataset
    directory, parquet file(s) or JSONL."""
    output_dir: str = "evaluation"
    """where report.json and one <task>.items.jsonl per task go."""
    prepare: bool = False
    """read and encode the likelihood tasks' data into <output-dir>/prepared.pkl for a training run's
    --eval-tasks-data, without a model (needs --tokenizer and, for audio tasks, the codec)."""
    compare: Optional[List[str]] = field(default=None, metadata=flag(nargs="+", metavar="REPORT"))
    """print these reports (report.json files or their directories) side by side, and nothing else."""
    codebooks: Optional[List[int]] = field(default=None, metadata=flag(nargs="+"))
    """score only these codebooks' audio tokens, e.g. 0 (the semantic codebook); default all."""
    max_tokens: int = 4096
    """padded tokens per scoring batch."""
    micro_batch_size: int = 16
    """prompts generated together (asr, tts, s2st)."""
    limit: Optional[int] = None
    """items per task at most (the first ones), for a quick look."""
    asr_model: Optional[str] = None
    """tts, s2st: a local transformers ASR model (e.g. a Whisper directory) that transcribes the generated
    speech for WER / ASR-BLEU (default: the evaluated model's own ASR mode)."""
    speaker_model: Optional[str] = None
    """tts, s2st: a local speaker-embedding model (a transformers WavLMForXVector directory) for speaker
    similarity to the voice prompt (tts) or the source speech (s2st)."""
    audio_cache: Optional[str] = None
    """where the codes of encoded evaluation audio are kept per codec (default: $MEGATRON_SODA_CACHE/audio_codes
    or ~/.cache/megatron_soda/audio_codes), so another checkpoint's evaluation does not re-encode."""
    seed: int = 1234
    """sampling seed of the generation tasks."""
    temperature: Optional[float] = None
    """asr, tts, s2st's speech: sampling temperature (default SODA's: 0.5 for asr, 0.9 for tts and s2st's
    speech; 0 is greedy)."""
    top_p: Optional[float] = None
    """asr, tts, s2st's speech: nucleus sampling (default SODA's 0.8)."""
    max_new_tokens: Optional[int] = None
    """asr, tts, s2st's speech: new tokens at most (default SODA's: 200 for asr, 1500 for tts and s2st)."""
    progress: bool = True
    """show progress bars."""
    json: Optional[str] = field(default=None, metadata=flag(metavar="PATH"))
    """also write the report as one JSON object to PATH ("-": to stdout, in place of the table)."""
    model: ModelSource = field(default_factory=ModelSource)
    translation: TranslationSampling = field(default_factory=TranslationSampling)
    codec: CodecConfig = field(default_factory=CodecConfig)

    def data_paths(self) -> Dict[str, str]:
        paths = {}
        for entry in self.input:
            key, sep, path = entry.partition("=")
            if not sep or not key or not path:
                raise ValueError(f"--input {entry!r}: give KEY=PATH, e.g. swuggy=/data/sWUGGY")
            paths[key] = path
        return paths

    def needs_codec(self) -> bool:
        audio = {"swuggy", "sblimp", "salmon", "asr", "tts", "s2st"}
        return any(task in audio for task in self.tasks)

    def check(self) -> None:
        check_json_path(self.json)
        if self.compare is not None:
            if len(self.compare) < 2:
                raise ValueError("--compare takes two or more reports")
            for path in self.compare:
                check_exists("--compare", path)
            return
        registry = _registry()
        if not self.tasks:
            raise ValueError(f"--tasks is required: choose from {', '.join(registry)}")
        unknown = [t for t in self.tasks if t not in registry]
        if unknown:
            raise ValueError(f"--tasks {' '.join(unknown)}: unknown; choose from {', '.join(registry)}")
        paths = self.data_paths()
        for task in self.tasks:
            key = registry[task].dataset
            if key not in paths:
                raise ValueError(f"--tasks {task} reads --input {key}=PATH, which is not given")
            check_exists(f"--input {key}=", paths[key])
        if self.prepare:
            generation = [t for t in self.tasks if registry[t].kind != "likelihood"]
            if generation:
                raise ValueError(f"--prepare is for likelihood tasks; {' '.join(generation)} generate at run time")
            if self.model.load is not None or self.model.ckpt_step is not None:
                raise ValueError("--prepare needs no model: drop --load/--ckpt-step (give --tokenizer)")
        self.model.check(model=not self.prepare)
        check_at_least("--max-tokens", self.max_tokens, 16)
        check_at_least("--micro-batch-size", self.micro_batch_size, 1)
        check_at_least("--limit", self.limit, 1)
        for name, path in (("--asr-model", self.asr_model), ("--speaker-model", self.speaker_model)):
            if path is not None:
                check_dir(name, path, ("config.json",))
        check_output_dir("--output-dir", self.output_dir)
        from megatron_soda.inference.sampling import SamplingConfig

        SamplingConfig(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens).check()
        self.translation.check()
        if self.needs_codec():
            check_codec(self.codec)


def default_audio_cache() -> str:
    root = os.environ.get("MEGATRON_SODA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "megatron_soda"))
    return os.path.join(root, "audio_codes")


PREPARED_FILE = "prepared.pkl"


def run_evaluation(config: EvaluateConfig, log=print) -> dict:
    """Runs every task of ``config`` and writes the report (or, with --prepare, the prepared file);
    returns the report (or a summary of what was prepared)."""
    from megatron_soda.evaluation.base import EvalContext, EvalSettings
    from megatron_soda.evaluation.report import write_report

    registry = _registry()
    tokenizer = config.model.load_tokenizer()
    settings = EvalSettings(
        codebooks=config.codebooks,
        max_tokens=config.max_tokens,
        limit=config.limit,
        progress=config.progress,
        seed=config.seed,
    )
    codec = audio = None
    codec_identity = None
    if config.needs_codec():
        from megatron_soda.codec.loading import load_codec
        from megatron_soda.evaluation.audio import AudioEncoder
        from megatron_soda.evaluation.audio import codec_identity as identity_of

        codec = load_codec(config.codec)
        layout = tokenizer.layout
        if (codec.num_codebooks, codec.codebook_size) != (layout.num_codebooks, layout.codebook_size):
            raise ValueError(
                f"the codec has {codec.num_codebooks} x {codec.codebook_size} codes, the tokenizer "
                f"{layout.num_codebooks} x {layout.codebook_size}: use the codec the model was trained with"
            )
        codec_identity = identity_of(config.codec, codec)
        audio = AudioEncoder(codec, codec_identity, config.audio_cache or default_audio_cache())
    paths = config.data_paths()
    options = {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "asr_model": config.asr_model,
        "speaker_model": config.speaker_model,
        **asdict(config.translation),
        "batch_size": config.micro_batch_size,
        "output_dir": config.output_dir,
    }
    if config.prepare:
        return _prepare(config, EvalContext(tokenizer, settings, None, None, audio, codec, options), paths, log)
    results, failed = [], {}
    with config.model.open(tokenizer.layout, "evaluation") as model:
        generator = model.generator(tokenizer.layout)
        context = EvalContext(tokenizer, settings, model.scorer(), generator, audio, codec, options)
        for task in config.tasks:
            spec = registry[task]
            log(f"{task}: {spec.description} ({paths[spec.dataset]})")
            try:
                results.append(spec.run(paths[spec.dataset], context))
            except ValueError as error:  # its data held nothing scorable: the other tasks still run
                log(f"{task}: failed: {error}")
                failed[task] = str(error)
    report_settings = {**asdict(settings), "inputs": paths, "codec": codec_identity, "options": options}
    return write_report(config.output_dir, model.description, report_settings, results, failed)


def _prepare(config: EvaluateConfig, context, paths: Dict[str, str], log) -> dict:
    """Each task's questions, read and encoded, written for ``--eval-tasks-data``."""
    from megatron_soda.evaluation.in_training import write_prepared
    from megatron_soda.evaluation.likelihood_tasks import LIKELIHOOD_TASKS

    collected = {}
    for task in config.tasks:
        spec = LIKELIHOOD_TASKS[task]
        log(f"{task}: reading {paths[spec.dataset]}")
        collected[task] = spec.gather(paths[spec.dataset], context)
    path = os.path.join(config.output_dir, PREPARED_FILE)
    write_prepared(path, collected, context.layout, context.settings, paths)
    return {
        "prepared": path,
        "tasks": {t: {"items": len(c.questions), "skipped": len(c.skipped)} for t, c in collected.items()},
    }
