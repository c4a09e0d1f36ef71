"""SODA's generation benchmarks: ASR on LibriSpeech test-clean and TTS on Seed-TTS-eval (English), scored by
word error rate (``evaluation.wer``: SODA's normalisation, corpus WER = errors / reference words).

**asr** reads a LibriSpeech-style JSONL manifest (``audio`` relative to it, ``text`` the reference,
optional ``id``, ``start``/``end`` seconds: ``data.manifest``'s format) and transcribes each clip with
SODA's prompt ``<|audio_start|>A<|audio_end|><|text_start|>`` and sampling (T 0.5, top-p 0.8, at most 200
new tokens, until ``<|text_end|>``).

**tts** reads Seed-TTS-eval's ``meta.lst`` (``utt|prompt_text|prompt_wav|target_text`` per line, paths
relative to the list; the 5-field form with the target's recording appended, and the 2-field
``utt|target_text`` without a voice prompt, are accepted as its scripts accept them) or a JSONL list
(``id``, ``text``, ``reference_audio``, ``reference_text``: ``inference.requests``'s format). Each target is
spoken in the prompt's voice (T 0.9, top-p 0.8, at most 1500 new tokens, until ``<|audio_end|>``),
decoded by the codec, transcribed, and scored against the target text. The transcriber is a local
transformers ASR model (``options["asr_model"]``; Seed-TTS-eval uses Whisper-large-v3) or, without one,
the evaluated model's own ASR mode on the codes it generated (a self-consistency check, not comparable
to published numbers). Speaker similarity, the cosine of x-vectors of the generated and the prompt
speech, needs ``options["speaker_model"]`` (``evaluation.speaker``: a local ``WavLMForXVector``;
Seed-TTS-eval's own is a WavLM-large ECAPA-TDNN, so values are not interchangeable).

Options (``context.options``): ``temperature``, ``top_p``, ``max_new_tokens`` override SODA's sampling
(temperature 0: greedy); ``batch_size`` caps prompts per batch (default 16; ``settings.max_tokens`` caps
the padded prompt tokens of a batch); ``output_dir`` keeps the generated wavs (in its ``tts_wavs``
folder); ``asr_model`` and ``speaker_model`` as above.

The s2st task (``evaluation.s2st_task``) shares the batching, the transcribers and the speaker model.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from megatron_soda.data.formats import Kind
from megatron_soda.data.manifest import Reject, UtteranceRecord, read_manifest
from megatron_soda.evaluation.base import EvalContext, Skipped, TaskResult, TaskSpec, register
from megatron_soda.evaluation.scoring import batches_by_tokens
from megatron_soda.evaluation.speaker import SpeakerSimilarity, summarize_similarity
from megatron_soda.evaluation.wer import errors_of, normalize, pooled_wer, word_errors
from megatron_soda.inference.outputs import answer_segment, finish
from megatron_soda.inference.prompts import TASKS, Task, build_prompt, task_sampling
from megatron_soda.inference.requests import Request, build_prompts, check_request, load_clip, read_requests
from megatron_soda.inference.run import file_name as wav_name
from megatron_soda.inference.sampling import SamplingConfig

DEFAULT_BATCH_SIZE = 16
LOAD_CHUNK = 64
"""clips loaded and encoded together: bounds the waveforms held in memory at once."""
WAV_DIR = "tts_wavs"
"""the generated speech's folder under ``options["output_dir"]``."""
NORMALISATION_NOTE = (
    "WER after SODA's normalisation (removes . , ! ? ; : \" ' - ( ) [ ] { } and curly quotes, collapses "
    "whitespace, lowercases); wer = total errors / total reference words, mean_utterance_wer = mean of "
    "per-utterance WERs"
)
# ---- shared ----------------------------------------------------------------------------------------


def check_context(context: EvalContext, task: str) -> None:
    missing = [name for name in ("generator", "codec") if getattr(context, name) is None]
    if missing:
        raise ValueError(f"the {task} task needs a {' and a '.join(missing)} in its context")


def sampling_for(task: Task, context: EvalContext) -> SamplingConfig:
    """SODA's sampling for ``task``, with the options' overrides, seeded by the settings."""
    options = context.options
    given = SamplingConfig(
        temperature=options.get("temperature"),
        top_p=options.get("top_p"),
        max_new_tokens=options.get("max_new_tokens"),
        seed=context.settings.seed,
    )
    given.check()
    return task_sampling(task, given)


def describe_sampling(sampling: SamplingConfig) -> str:
    how = "greedy" if sampling.greedy else f"temperature {sampling.temperature:g}, top-p {sampling.top_p:g}"
    return f"{how}, at most {sampling.max_new_tokens} new tokens, seed {sampling.seed}"


def _batches(lengths: Sequence[int], context: EvalContext) -> List[List[int]]:
    """Prompt indices sorted by length, each batch within ``settings.max_tokens`` padded prompt tokens
    (a longer prompt goes alone) and ``options["batch_size"]`` prompts."""
    size = int(context.options.get("batch_size") or DEFAULT_BATCH_SIZE)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    groups = batches_by_tokens(lengths, context.settings.max_tokens)
    return [group[i : i + size] for group in groups for i in range(0, len(group), size)]


def prompt_batches(prompts: Sequence[np.ndarray], context: EvalContext, name: str) -> Iterator[List[int]]:
    """The indices of each batch of ``prompts`` to generate together, under a progress bar over them."""
    from tqdm import tqdm

    batches = _batches([len(p) for p in prompts], context)
    bar = tqdm(total=len(prompts), unit="item", desc=name, disable=not context.settings.progress, file=sys.stderr)
    with bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))


def _generate(
    task: Task, prompts: Sequence[np.ndarray], context: EvalContext, sampling: SamplingConfig
) -> Iterator[Tuple[List[int], list]]:
    """``(indices, generations)`` batch by batch."""
    stops = TASKS[task].stop_ids(context.layout)
    for batch in prompt_batches(prompts, context, task.value):
        yield batch, context.generator.generate([prompts[i] for i in batch], sampling, stops)


def generation_fields(record: dict) -> dict:
    """What a side-file record keeps of ``outputs.finish``'s record (the ids are left out: they are long)."""
    keep = ("prompt_tokens", "new_tokens", "stop", "generation_seconds", "problems", "frames", "audio_seconds", "wav")
    return {k: record[k] for k in keep if k in record}


def _score(reference: str, hypothesis: str) -> dict:
    counts = word_errors(reference, hypothesis)
    return {
        "hypothesis": hypothesis,
        "reference_normalized": normalize(reference),
        "hypothesis_normalized": normalize(hypothesis),
        "errors": errors_of(counts),
        "words": counts["reference_words"],
        **{k: counts[k] for k in ("substitutions", "deletions", "insertions")},
    }


def _wer_metrics(items: Sequence[dict]) -> Dict[str, float]:
    pooled = pooled_wer({"reference_words": r["words"], **r} for r in items)
    return {"wer": pooled["wer"], "mean_utterance_wer": pooled["mean_utterance_wer"]}


def skipped_of(reject: Reject) -> Skipped:
    return Skipped(reject.source, reject.reason, reject.message)


def nothing_scored(path: str, task: str, skipped: Sequence[Skipped]) -> ValueError:
    first = f"; the first: {skipped[0].message}" if skipped else ""
    return ValueError(f"{path}: no {task} item could be scored ({len(skipped)} skipped{first})")


# ---- ASR -------------------------------------------------------------------------------------------


def _load_record(record: UtteranceRecord, sample_rate: int) -> np.ndarray:
    """The record's clip (its ``[start, end)`` segment when given) at ``sample_rate``; ``AudioRejected``
    names the file otherwise. (``requests.load_clip`` reads whole files only.)"""
    from megatron_soda.codec.audio_io import check_waveform, load_audio, resample

    if record.start is None and record.end is None:
        return load_clip(record.audio, sample_rate)
    wave, rate = load_audio(record.audio, record.start, record.end)
    wave = resample(wave, rate, sample_rate)
    check_waveform(wave, sample_rate, record.audio)
    return wave


def _encode(context: EvalContext, waves: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Codes of clips at the codec's rate: through ``context.audio`` (cached by content) when there is one."""
    if context.audio is None:
        return context.codec.encode(list(waves))
    from megatron_soda.evaluation.audio import clip_key

    rate = context.codec.sample_rate
    return context.audio.encode([(clip_key(wave, rate), wave, rate) for wave in waves])


def load_asr_items(path: str, context: EvalContext) -> Tuple[List[Tuple[UtteranceRecord, np.ndarray]], List[Skipped]]:
    """``(record, codes)`` for every manifest line whose reference has words and whose audio loads; the
    rest as skipped, by line. Clips are encoded ``LOAD_CHUNK`` at a time."""
    from megatron_soda.codec.audio_io import AudioRejected

    records, rejects = read_manifest(path)
    skipped = [skipped_of(r) for r in rejects]
    usable = []
    for record in records[: context.settings.limit]:
        if not normalize(record.text):
            skipped.append(Skipped(record.source, "empty_text", f"{record.source}: no words in {record.text!r}"))
        elif not os.path.isfile(record.audio):
            skipped.append(Skipped(record.source, "missing_audio", f"{record.source}: no audio file {record.audio}"))
        else:
            usable.append(record)
    items = []
    for start in range(0, len(usable), LOAD_CHUNK):
        loaded = []
        for record in usable[start : start + LOAD_CHUNK]:
            try:
                loaded.append((record, _load_record(record, context.codec.sample_rate)))
            except AudioRejected as error:
                skipped.append(Skipped(record.source, error.reason, f"{record.source}: {error}"))
        codes = _encode(context, [wave for _, wave in loaded]) if loaded else []
        items += [(record, c) for (record, _), c in zip(loaded, codes)]
    return items, skipped


def run_asr(path: str, context: EvalContext) -> TaskResult:
    """SODA's ASR evaluation of ``path`` (a JSONL manifest): WER of the model's transcripts."""
    check_context(context, "asr")
    items, skipped = load_asr_items(path, context)
    if not items:
        raise nothing_scored(path, "asr", skipped)
    sampling = sampling_for(Task.ASR, context)
    prompts = [build_prompt(Task.ASR, context.layout, codes=codes) for _, codes in items]
    records: List[Optional[dict]] = [None] * len(items)
    for batch, generations in _generate(Task.ASR, prompts, context, sampling):
        for i, generation in zip(batch, generations):
            record, _ = items[i]
            answer = finish(Task.ASR, generation, context.tokenizer)
            records[i] = {
                "id": record.id,
                "source": record.source,
                "audio": record.audio,
                "reference": record.text,
                **_score(record.text, answer["text"]),
                **generation_fields(answer),
            }
    return TaskResult(
        task="asr",
        metrics=_wer_metrics(records),
        primary="wer",
        n=len(records),
        items=records,
        skipped=skipped,
        notes=[NORMALISATION_NOTE, f"transcripts sampled as SODA's ASR evaluation: {describe_sampling(sampling)}"],
    )


# ---- TTS -------------------------------------------------------------------------------------------


def _is_jsonl(path: str) -> bool:
    if path.endswith(".jsonl"):
        return True
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                return line.lstrip().startswith(b"{")
    return False


def read_tts_list(path: str) -> Tuple[List[Request], List[Reject]]:
    """The requests of a Seed-TTS-eval ``meta.lst`` or a JSONL list, and its rejected lines.

    ``meta.lst`` lines: ``utt|prompt_text|prompt_wav|target_text`` (a fifth field, the target's
    recording, is ignored) or ``utt|target_text`` (no voice prompt); ``prompt_wav`` is relative to the
    list, as Seed-TTS-eval's ``get_wav_res_ref_text.py`` reads it.
    """
    if _is_jsonl(path):
        return read_requests(path, Task.TTS)
    base = os.path.dirname(os.path.abspath(path))
    requests, rejects = [], []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            source = f"{path}:{number}"
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                rejects.append(Reject(source, "non_utf8", f"{source}: not UTF-8 ({error.reason})"))
                continue
            if not line:
                continue
            fields = line.split("|")
            if len(fields) in (4, 5):
                utt, prompt_text, prompt_wav, text = fields[:4]
            elif len(fields) == 2:
                (utt, text), prompt_text, prompt_wav = fields, None, None
            else:
                message = f"{source}: {len(fields)} '|'-separated fields; expected utt|prompt_text|prompt_wav|text"
                rejects.append(Reject(source, "bad_line", message))
                continue
            request = Request(
                id=utt or f"line{number}",
                source=source,
                text=text,
                reference_text=prompt_text or None,
                reference_audio=os.path.normpath(os.path.join(base, prompt_wav)) if prompt_wav else None,
            )
            try:
                check_request(request, Task.TTS)
            except ValueError as error:
                rejects.append(Reject(source, "missing_field", str(error), request.id))
                continue
            requests.append(request)
    return requests, rejects


class PipelineTranscriber:
    """A local transformers ASR model (``pipeline("automatic-speech-recognition")``), fed at its feature
    extractor's rate. Whisper pads every input to 30 s, so its inputs are batched; other models (CTC
    models often have no attention mask, and padding would change their output) take one at a time."""

    def __init__(self, path: str, device):
        from transformers import pipeline

        if not os.path.isdir(path):
            raise ValueError(f"asr_model: {path} is not a directory (a local transformers ASR model)")
        self.pipe = pipeline("automatic-speech-recognition", model=path, device=device)
        self.rate = self.pipe.feature_extractor.sampling_rate
        kind = self.pipe.model.config.model_type
        self.whisper = kind == "whisper"
        self.multilingual = self.whisper and getattr(self.pipe.model.generation_config, "is_multilingual", True)
        self.note = f"generated speech transcribed by the ASR model {path} ({kind})"

    def __call__(
        self, codes: Sequence[np.ndarray], waves: Sequence[Optional[np.ndarray]], rate: int, language: str = "english"
    ) -> List[str]:
        """A transcriber's interface: a batch's generated ``codes`` and their decoded ``waves`` (None where
        nothing was spoken) at ``rate``, all in ``language`` (a Whisper name or code; English by default, as
        Seed-TTS-eval forces it) -> one transcript each ("" for silence). This one reads the waves."""
        from megatron_soda.codec.audio_io import resample

        present = [i for i, wave in enumerate(waves) if wave is not None]
        if not present:
            return [""] * len(waves)
        inputs = [resample(np.asarray(waves[i], np.float32), rate, self.rate) for i in present]
        # An English-only Whisper refuses a language; other models take none.
        told = {"generate_kwargs": {"language": language, "task": "transcribe"}} if self.multilingual else {}
        outputs = self.pipe(inputs, batch_size=len(inputs) if self.whisper else 1, **told)
        texts = [""] * len(waves)
        for i, output in zip(present, outputs):
            texts[i] = output["text"]
        return texts


class OwnTranscriber:
    """The evaluated model's ASR mode, greedy, on the codes it generated (not re-encoded from the wav)."""

    note = "generated speech transcribed greedily by the evaluated model's own ASR mode, from its generated codes"

    def __init__(self, context: EvalContext):
        self.context = context
        self.sampling = task_sampling(Task.ASR, SamplingConfig(temperature=0.0, seed=context.settings.seed))

    def __call__(self, codes: Sequence[np.ndarray], waves, rate, language: Optional[str] = None) -> List[str]:
        """``PipelineTranscriber.__call__``'s interface; this one reads the codes (in whatever language the
        model writes)."""
        layout, tokenizer = self.context.layout, self.context.tokenizer
        present = [i for i, c in enumerate(codes) if c.shape[1]]
        texts = [""] * len(codes)
        if present:
            prompts = [build_prompt(Task.ASR, layout, codes=codes[i]) for i in present]
            generations = self.context.generator.generate(prompts, self.sampling, TASKS[Task.ASR].stop_ids(layout))
            for i, generation in zip(present, generations):
                texts[i] = finish(Task.ASR, generation, tokenizer)["text"]
        return texts


def prompt_requests(
    requests: Sequence[Request], rejects: Sequence[Reject], task: Task, context: EvalContext
) -> Tuple[List[Tuple[Request, np.ndarray]], List[Skipped]]:
    """``(request, prompt ids)`` for the first ``settings.limit`` requests whose audio loads (loaded and
    encoded ``LOAD_CHUNK`` at a time); the others and ``rejects`` as skipped."""
    requests, rejects = requests[: context.settings.limit], list(rejects)
    items = []
    for start in range(0, len(requests), LOAD_CHUNK):
        chunk = requests[start : start + LOAD_CHUNK]
        prompts, unloadable = build_prompts(chunk, task, context.tokenizer, context.codec)
        items += prompts
        rejects += unloadable
    return items, [skipped_of(r) for r in rejects]


def load_tts_items(path: str, context: EvalContext) -> Tuple[List[Tuple[Request, np.ndarray]], List[Skipped]]:
    """``(request, prompt ids)`` for every line whose voice prompt loads; the rest as skipped."""
    return prompt_requests(*read_tts_list(path), Task.TTS, context)


def run_tts(path: str, context: EvalContext) -> TaskResult:
    """Seed-TTS-eval as SODA runs it: speak each target in the prompt's voice, transcribe, score the WER
    (and the speaker similarity, given a speaker model)."""
    check_context(context, "tts")
    layout, tokenizer, codec = context.layout, context.tokenizer, context.codec
    options = context.options
    device = getattr(context.generator, "device", "cpu")
    asr_model, speaker_model = options.get("asr_model"), options.get("speaker_model")
    transcribe = PipelineTranscriber(asr_model, device) if asr_model else OwnTranscriber(context)
    similarity = SpeakerSimilarity(speaker_model, device) if speaker_model else None
    items, skipped = load_tts_items(path, context)
    if not items:
        raise nothing_scored(path, "tts", skipped)
    sampling = sampling_for(Task.TTS, context)
    records: List[Optional[dict]] = [None] * len(items)
    empty = np.zeros((layout.num_codebooks, 0), np.int64)
    wav_dir = os.path.join(options["output_dir"], WAV_DIR) if options.get("output_dir") else None
    for batch, generations in _generate(Task.TTS, [prompt for _, prompt in items], context, sampling):
        codes = []
        for generation in generations:
            segment, _ = answer_segment(Kind.AUDIO, generation, layout)
            codes.append(layout.ids_to_codes(segment.ids) if segment is not None else empty)
        speaking = [j for j, c in enumerate(codes) if c.shape[1]]
        waves: List[Optional[np.ndarray]] = [None] * len(codes)
        for j, wave in zip(speaking, codec.decode([codes[j] for j in speaking]) if speaking else []):
            waves[j] = wave
        hypotheses = transcribe(codes, waves, codec.sample_rate)
        for j, (i, generation) in enumerate(zip(batch, generations)):
            request = items[i][0]
            name = wav_name(request, i)
            answer = finish(Task.TTS, generation, tokenizer, codec, wav_dir, name, wave=waves[j])
            record = {
                "id": request.id,
                "source": request.source,
                "text": request.text,
                "reference_text": request.reference_text,
                "reference_audio": request.reference_audio,
                **_score(request.text, hypotheses[j]),
                **generation_fields(answer),
            }
            if similarity is not None and request.reference_audio and waves[j] is not None:
                record["speaker_similarity"] = similarity(waves[j], codec.sample_rate, request.reference_audio)
            records[i] = record

    metrics = _wer_metrics(records)
    notes = [
        NORMALISATION_NOTE,
        transcribe.note,
        f"speech sampled as SODA's TTS evaluation: {describe_sampling(sampling)}",
    ]
    notes.append(
        summarize_similarity(
            records, similarity, metrics, "the prompt speech", "both a voice prompt and generated speech"
        )
    )
    return TaskResult(
        task="tts", metrics=metrics, primary="wer", n=len(records), items=records, skipped=skipped, notes=notes
    )


ASR = register(
    TaskSpec(
        name="asr",
        kind="generation",
        dataset="asr",
        description="LibriSpeech test-clean ASR, SODA's prompt and sampling: WER (SODA's normalisation)",
        run=run_asr,
    )
)
TTS = register(
    TaskSpec(
        name="tts",
        kind="generation",
        dataset="tts",
        description="Seed-TTS-eval (English) voice-prompted TTS: WER of the transcribed speech, speaker similarity",
        run=run_tts,
    )
)
