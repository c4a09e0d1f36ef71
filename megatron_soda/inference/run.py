"""One generation job: requests -> prompts -> batches through our model or a Hugging Face export ->
wav files, text and one JSONL record per request. ``tools/generate.py`` is its command line.

Prompts are batched by length (sorted, then cut into ``--micro-batch-size`` groups), so left padding
stays small; the records come back in the input's order.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

from megatron_soda.checks import check_at_least, check_file, check_output_dir
from megatron_soda.codec.cli import CodecConfig, check_codec
from megatron_soda.flags import flag
from megatron_soda.inference.model_source import ModelSource
from megatron_soda.inference.prompts import TASKS, Task, task_sampling
from megatron_soda.inference.requests import Request, build_prompts, check_request, read_requests
from megatron_soda.inference.s2st import TranslationSampling
from megatron_soda.inference.sampling import SamplingConfig
from megatron_soda.tool_json import check_json_path

RECORDS_FILE = "generations.jsonl"
REQUEST_FLAGS = {
    "prompt_audio": {Task.ASR: "audio", Task.CONTINUE: "audio", Task.S2ST: "source_audio"},
    "prompt_text": {Task.TTS: "text", Task.TEXT: "text", Task.S2ST: "source_text"},
    "reference_audio": {Task.TTS: "reference_audio"},
    "reference_text": {Task.TTS: "reference_text"},
    "source_language": {Task.S2ST: "source_language"},
    "translate_into": {Task.S2ST: "target_language"},
}
"""The flags of one request (instead of --input): which ``Request`` field each fills, per task it applies to."""


@dataclass
class GenerateConfig:
    """What ``tools/generate.py`` runs; its fields are the tool's flags."""

    task: str = field(metadata=flag(choices=tuple(t.value for t in Task)))
    """asr (speech -> transcript), tts (text [+ voice reference] -> speech), continue (speech -> more speech),
    text (text -> more text) or s2st (speech -> its translation, as text and as speech in the same voice)."""
    input: Optional[str] = None
    """JSONL manifest of requests: audio, text, reference_audio, reference_text, id (paths relative to it);
    for s2st: source_audio, source_language, source_text, target_language, id."""
    prompt_audio: Optional[str] = None
    """one request: the speech asr transcribes, continue continues or s2st translates (instead of --input)."""
    prompt_text: Optional[str] = None
    """one request: the text tts speaks or text continues, or s2st's transcript of --prompt-audio (instead
    of --input)."""
    reference_audio: Optional[str] = None
    """one tts request: the voice to speak in (with --reference-text, its transcript)."""
    reference_text: Optional[str] = None
    """one tts request: the transcript of --reference-audio."""
    source_language: Optional[str] = None
    """one s2st request: the language of --prompt-audio, a code such as fr."""
    translate_into: Optional[str] = None
    """one s2st request: the language code to translate into (default en; a manifest's target_language)."""
    output_dir: str = "generated"
    """where generations.jsonl and the wav files go."""
    micro_batch_size: int = 8
    """prompts decoded together."""
    structured_decoding: bool = False
    """allow only well-formed SODA output (inside audio: the due codebook's ids or, on a frame boundary,
    <|audio_end|>; inside text: no audio). Off by default, as SODA samples."""
    progress: bool = True
    """show a progress bar over the prompts."""
    json: Optional[str] = field(default=None, metadata=flag(metavar="PATH"))
    """also write the summary as one JSON object to PATH ("-": to stdout, in place of the text)."""
    model: ModelSource = field(default_factory=ModelSource)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    translation: TranslationSampling = field(default_factory=TranslationSampling)
    codec: CodecConfig = field(default_factory=CodecConfig)

    @property
    def needs_codec(self) -> bool:
        return Task(self.task) is not Task.TEXT

    def check(self) -> None:
        self.model.check()
        task = Task(self.task)
        single = [name for name in REQUEST_FLAGS if getattr(self, name)]
        if self.input is not None:
            check_file("--input", self.input)
            if single:
                raise ValueError(
                    f"give requests as --input (a JSONL manifest) or as flags ({_flags(single)}), not both"
                )
        else:
            unused = [name for name in single if task not in REQUEST_FLAGS[name]]
            if unused:
                raise ValueError(f"{_flags(unused)} do not apply to --task {self.task}")
            check_request(self.single_request(), task)
            for name, path in (("--prompt-audio", self.prompt_audio), ("--reference-audio", self.reference_audio)):
                if path:
                    check_file(name, path)
        check_at_least("--micro-batch-size", self.micro_batch_size, 1)
        self.sampling.check()
        self.translation.check()
        if task is not Task.S2ST and self.translation.given:
            raise ValueError(f"{' and '.join(self.translation.given)} apply to --task s2st only")
        check_output_dir("--output-dir", self.output_dir)
        check_json_path(self.json)
        if self.needs_codec:
            check_codec(self.codec)

    def single_request(self) -> Request:
        task = Task(self.task)
        fields = {fills[task]: getattr(self, name) for name, fills in REQUEST_FLAGS.items() if task in fills}
        return Request(id="request", source="flags", **fields)


def _flags(names) -> str:
    return " and ".join(f"--{name.replace('_', '-')}" for name in names)


def run_generation(config: GenerateConfig, log=print) -> dict:
    """Runs the job; returns its summary (also written as ``summary.json`` beside the records)."""
    from tqdm import tqdm

    from megatron_soda.inference.outputs import finish
    from megatron_soda.inference.s2st import finish_translation, translate_prompts
    from megatron_soda.inference.structured import StructuredDecoding

    task = Task(config.task)
    tokenizer = config.model.load_tokenizer()
    layout = tokenizer.layout
    codec = None
    if config.needs_codec:
        from megatron_soda.codec.loading import load_codec

        codec = load_codec(config.codec)
        if (codec.num_codebooks, codec.codebook_size) != (layout.num_codebooks, layout.codebook_size):
            raise ValueError(
                f"the codec has {codec.num_codebooks} x {codec.codebook_size} codes, the tokenizer "
                f"{layout.num_codebooks} x {layout.codebook_size}: use the codec the model was trained with"
            )
    if config.input is not None:
        requests, rejects = read_requests(config.input, task)
    else:
        requests, rejects = [config.single_request()], []
    prompts, unloadable = build_prompts(requests, task, tokenizer, codec)
    rejects += unloadable
    for reject in rejects:
        log(f"skipped {reject.message}")

    sampling = task_sampling(task, config.sampling)
    text_sampling = config.translation.sampling(sampling.seed) if task is Task.S2ST else None
    processors = [StructuredDecoding(layout)] if config.structured_decoding else []
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i][1]))
    batches = [order[i : i + config.micro_batch_size] for i in range(0, len(order), config.micro_batch_size)]
    records: List[Optional[dict]] = [None] * len(prompts)
    os.makedirs(config.output_dir, exist_ok=True)
    new_tokens, seconds = 0, 0.0
    with (
        config.model.open(layout, "generation") as model,
        tqdm(total=len(prompts), unit="prompt", desc=task.value, disable=not config.progress, file=sys.stderr) as bar,
    ):
        generator = model.generator(layout)
        for batch in batches:
            batch_prompts = [prompts[i][1] for i in batch]
            if task is Task.S2ST:
                answers = translate_prompts(generator, batch_prompts, layout, text_sampling, sampling, processors)
                runs, record_of = (answers[0].text, answers[0].speech), finish_translation
            else:
                answers = generator.generate(batch_prompts, sampling, TASKS[task].stop_ids(layout), processors)
                runs, record_of = answers[:1], functools.partial(finish, task)
            new_tokens += sum(run.batch_new_tokens for run in runs)
            seconds += sum(run.seconds for run in runs)
            for i, answer in zip(batch, answers):
                request = prompts[i][0]
                record = record_of(answer, tokenizer, codec, config.output_dir, file_name(request, i))
                records[i] = {"id": request.id, "source": request.source, **request.given(task), **record}
            bar.update(len(batch))

    path = os.path.join(config.output_dir, RECORDS_FILE)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(f"{path}.tmp", path)
    summary = {
        "task": task.value,
        "model": config.model.load or config.model.hf,
        "requests": len(requests) + len(rejects) - len(unloadable),  # manifest lines that asked for something
        "generated": len(records),
        "skipped": [{"source": r.source, "reason": r.reason, "message": r.message} for r in rejects],
        "new_tokens": new_tokens,
        "tokens_per_second": round(new_tokens / seconds, 2) if seconds else 0.0,
        "sampling": _settings(sampling),
        **({"text_sampling": _settings(text_sampling)} if text_sampling else {}),
        "structured_decoding": config.structured_decoding,
        "records": path,
    }
    with open(os.path.join(config.output_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


def _settings(sampling: SamplingConfig) -> dict:
    return {k: getattr(sampling, k) for k in ("temperature", "top_k", "top_p", "max_new_tokens", "seed")}


def file_name(request: Request, index: int) -> str:
    """A file name for the answer to ``request`` (the ``index``-th): its id, made safe, after the index."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.id)[:80]
    return f"{index:05d}_{safe}"
