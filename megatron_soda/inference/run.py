"""One generation job: requests -> prompts -> batches through our model or a Hugging Face export ->
wav files, text and one JSONL record per request. ``tools/generate.py`` is its command line.

Prompts are batched by length (sorted, then cut into ``--micro-batch-size`` groups), so left padding
stays small; the records come back in the input's order.
"""

from __future__ import annotations

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
from megatron_soda.inference.requests import NEEDS, Request, build_prompts, check_request, read_requests
from megatron_soda.inference.sampling import SamplingConfig
from megatron_soda.tool_json import check_json_path

RECORDS_FILE = "generations.jsonl"


@dataclass
class GenerateConfig:
    """What ``tools/generate.py`` runs; its fields are the tool's flags."""

    task: str = field(metadata=flag(choices=tuple(t.value for t in Task)))
    """asr (speech -> transcript), tts (text [+ voice reference] -> speech), continue (speech -> more speech)
    or text (text -> more text)."""
    input: Optional[str] = None
    """JSONL manifest of requests: audio, text, reference_audio, reference_text, id (paths relative to it)."""
    prompt_audio: Optional[str] = None
    """one request: the speech asr transcribes or continue continues (instead of --input)."""
    prompt_text: Optional[str] = None
    """one request: the text tts speaks or text continues (instead of --input)."""
    reference_audio: Optional[str] = None
    """one tts request: the voice to speak in (with --reference-text, its transcript)."""
    reference_text: Optional[str] = None
    """one tts request: the transcript of --reference-audio."""
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
    codec: CodecConfig = field(default_factory=CodecConfig)

    @property
    def needs_codec(self) -> bool:
        return Task(self.task) is not Task.TEXT

    def check(self) -> None:
        self.model.check()
        single = [self.prompt_audio, self.prompt_text, self.reference_audio, self.reference_text]
        if self.input is not None:
            check_file("--input", self.input)
            if any(single):
                raise ValueError(
                    "give requests as --input (a JSONL manifest) or as --prompt-audio/--prompt-text flags, not both"
                )
        else:
            check_request(self.single_request(), Task(self.task))
            unused = [f for f, v in (("--prompt-audio", self.prompt_audio), ("--prompt-text", self.prompt_text)) if v]
            unused = [f for f in unused if f.removeprefix("--prompt-") not in NEEDS[Task(self.task)]]
            if unused:
                raise ValueError(f"{' and '.join(unused)} do not apply to --task {self.task}")
            for name, path in (("--prompt-audio", self.prompt_audio), ("--reference-audio", self.reference_audio)):
                if path:
                    check_file(name, path)
        check_at_least("--micro-batch-size", self.micro_batch_size, 1)
        self.sampling.check()
        check_output_dir("--output-dir", self.output_dir)
        check_json_path(self.json)
        if self.needs_codec:
            check_codec(self.codec)

    def single_request(self) -> Request:
        return Request(
            id="request",
            source="flags",
            audio=self.prompt_audio,
            text=self.prompt_text,
            reference_audio=self.reference_audio,
            reference_text=self.reference_text,
        )


def run_generation(config: GenerateConfig, log=print) -> dict:
    """Runs the job; returns its summary (also written as ``summary.json`` beside the records)."""
    from tqdm import tqdm

    from megatron_soda.inference.outputs import finish
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
    stops = TASKS[task].stop_ids(layout)
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
            generations = generator.generate([prompts[i][1] for i in batch], sampling, stops, processors)
            new_tokens += generations[0].batch_new_tokens
            seconds += generations[0].seconds
            for i, generation in zip(batch, generations):
                request = prompts[i][0]
                record = finish(task, generation, tokenizer, codec, config.output_dir, file_name(request, i))
                records[i] = {"id": request.id, "source": request.source, **_inputs(request), **record}
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
        "sampling": {k: getattr(sampling, k) for k in ("temperature", "top_k", "top_p", "max_new_tokens", "seed")},
        "structured_decoding": config.structured_decoding,
        "records": path,
    }
    with open(os.path.join(config.output_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


def _inputs(request: Request) -> dict:
    return {
        k: getattr(request, k) for k in ("audio", "text", "reference_audio", "reference_text") if getattr(request, k)
    }


def file_name(request: Request, index: int) -> str:
    """A file name for the answer to ``request`` (the ``index``-th): its id, made safe, after the index."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.id)[:80]
    return f"{index:05d}_{safe}"
