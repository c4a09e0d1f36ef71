"""Voice-preserving speech-to-speech translation on CVSS-style data: BLEU of the translation text, ASR-BLEU
of the translated speech, and speaker similarity between the source and the translated speech.

The data is a JSONL list of ``inference.requests``' s2st records: ``source_audio`` (relative to the list),
``source_language`` (a code such as ``fr``), optional ``source_text``, ``target_text`` (the reference
translation; a record without one is skipped), optional ``target_language`` (default ``en``),
``target_audio`` (kept in the items, not scored) and ``id``. Each source is translated as
``inference.s2st`` does it: the text (greedy unless ``text_temperature``), then its speech with the source
speech in context (SODA's TTS sampling unless ``temperature``/``top_p``/``max_new_tokens``).

- **bleu**: sacrebleu's corpus BLEU of the translation texts as written (``evaluation.bleu``).
- **asr_bleu** (the headline, as S2ST papers report): the generated speech transcribed, as the tts task
  transcribes it (``asr_model``, told the target language when it is a multilingual Whisper, or the
  model's own ASR mode), then corpus BLEU with both sides in SODA's normalisation (lowercase, punctuation
  removed: an ASR model's casing and punctuation are not the translation's).
- **speaker_similarity** with ``speaker_model``: x-vector cosine of the source and the generated speech.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Sequence

import numpy as np

from megatron_soda.data.formats import Kind
from megatron_soda.evaluation.base import EvalContext, Skipped, TaskResult, TaskSpec, register
from megatron_soda.evaluation.bleu import corpus_bleu, sentence_bleu
from megatron_soda.evaluation.generation_tasks import (
    OwnTranscriber,
    PipelineTranscriber,
    check_context,
    describe_sampling,
    generation_fields,
    nothing_scored,
    prompt_batches,
    prompt_requests,
    sampling_for,
)
from megatron_soda.evaluation.speaker import SpeakerSimilarity, summarize_similarity
from megatron_soda.evaluation.wer import normalize
from megatron_soda.inference.outputs import answer_segment
from megatron_soda.inference.prompts import Task
from megatron_soda.inference.requests import read_requests
from megatron_soda.inference.run import file_name as wav_name
from megatron_soda.inference.s2st import TranslationSampling, finish_translation, translate_prompts

WAV_DIR = "s2st_wavs"
"""the generated speech's folder under ``options["output_dir"]``."""
ASR_BLEU_NOTE = (
    "asr_bleu: both the transcripts and the references in SODA's normalisation (lowercase, punctuation removed)"
)


def _text_sampling(context: EvalContext):
    """The translation's sampling: ``inference.s2st``'s greedy default unless the options' ``text_*`` say otherwise."""
    given = TranslationSampling(
        **{f.name: context.options.get(f.name) for f in dataclasses.fields(TranslationSampling)}
    )
    given.check()
    return given.sampling(context.settings.seed)


def _transcribe(transcribe, codes, waves, rate: int, languages: Sequence[str]) -> List[str]:
    """One transcript per clip, each group of a target language transcribed together, told its language."""
    texts = [""] * len(codes)
    for language in sorted(set(languages)):
        rows = [j for j, other in enumerate(languages) if other == language]
        for j, text in zip(rows, transcribe([codes[j] for j in rows], [waves[j] for j in rows], rate, language)):
            texts[j] = text
    return texts


def load_s2st_items(path: str, context: EvalContext):
    """``(request, prompt ids)`` for every record with a reference whose source audio loads; the rest skipped."""
    requests, rejects = read_requests(path, Task.S2ST)
    referenced = [r for r in requests if (r.target_text or "").strip()]
    unreferenced = [r for r in requests if not (r.target_text or "").strip()]
    items, skipped = prompt_requests(referenced, rejects, Task.S2ST, context)
    skipped += [
        Skipped(r.source, "missing_field", f"{r.source}: no target_text (the reference translation) to score against")
        for r in unreferenced
    ]
    return items, sorted(skipped, key=lambda s: _line(s.source))


def _line(source: str) -> int:
    tail = source.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def run_s2st(path: str, context: EvalContext) -> TaskResult:
    """Translates each source into text and speech; scores BLEU, ASR-BLEU and (with a speaker model)
    speaker similarity."""
    check_context(context, "s2st")
    layout, tokenizer, codec, options = context.layout, context.tokenizer, context.codec, context.options
    device = getattr(context.generator, "device", "cpu")
    transcribe = (
        PipelineTranscriber(options["asr_model"], device) if options.get("asr_model") else OwnTranscriber(context)
    )
    similarity = SpeakerSimilarity(options["speaker_model"], device) if options.get("speaker_model") else None
    items, skipped = load_s2st_items(path, context)
    if not items:
        raise nothing_scored(path, "s2st", skipped)
    speech_sampling, text_sampling = sampling_for(Task.S2ST, context), _text_sampling(context)
    wav_dir = os.path.join(options["output_dir"], WAV_DIR) if options.get("output_dir") else None
    empty = np.zeros((layout.num_codebooks, 0), np.int64)
    prompts = [prompt for _, prompt in items]
    records: List[Optional[dict]] = [None] * len(items)
    for batch in prompt_batches(prompts, context, "s2st"):
        translated = translate_prompts(
            context.generator, [prompts[i] for i in batch], layout, text_sampling, speech_sampling
        )
        codes = []
        for result in translated:
            segment, _ = answer_segment(Kind.AUDIO, result.speech, layout)
            codes.append(layout.ids_to_codes(segment.ids) if segment is not None else empty)
        speaking = [j for j, c in enumerate(codes) if c.shape[1]]
        waves: List[Optional[np.ndarray]] = [None] * len(codes)
        for j, wave in zip(speaking, codec.decode([codes[j] for j in speaking]) if speaking else []):
            waves[j] = wave
        languages = [items[i][0].target_language or "en" for i in batch]
        transcripts = _transcribe(transcribe, codes, waves, codec.sample_rate, languages)
        for j, (i, result) in enumerate(zip(batch, translated)):
            request = items[i][0]
            answer = finish_translation(result, tokenizer, codec, wav_dir, wav_name(request, i), wave=waves[j])
            record = {
                "id": request.id,
                "source": request.source,
                **request.given(Task.S2ST),
                "translation": answer["text"],
                "bleu": sentence_bleu(answer["text"], request.target_text),
                "transcript": transcripts[j],
                "asr_bleu": sentence_bleu(normalize(transcripts[j]), normalize(request.target_text)),
                **{key: answer[key] for key in ("frames", "audio_seconds", "wav") if key in answer},
                "text_generation": generation_fields(answer["translation"]),
                "speech_generation": generation_fields(answer["speech"]),
            }
            if similarity is not None and waves[j] is not None:
                record["speaker_similarity"] = similarity(waves[j], codec.sample_rate, request.source_audio)
            records[i] = record
    return _result(records, skipped, transcribe, similarity, text_sampling, speech_sampling)


def _result(records, skipped, transcribe, similarity, text_sampling, speech_sampling) -> TaskResult:
    references = [r["target_text"] for r in records]
    bleu = corpus_bleu([r["translation"] for r in records], references)
    asr_bleu = corpus_bleu([normalize(r["transcript"]) for r in records], [normalize(t) for t in references])
    metrics = {"asr_bleu": asr_bleu.score, "bleu": bleu.score}
    notes = [
        f"bleu: sacrebleu corpus BLEU of the translation texts as written, signature {bleu.signature}",
        f"{ASR_BLEU_NOTE}; sacrebleu signature {asr_bleu.signature}",
        transcribe.note,
        f"translation text: {describe_sampling(text_sampling)}",
        f"speech sampled as SODA's TTS evaluation: {describe_sampling(speech_sampling)}",
    ]
    notes.append(summarize_similarity(records, similarity, metrics, "the source speech", "generated speech"))
    return TaskResult(
        task="s2st",
        metrics=metrics,
        primary="asr_bleu",
        n=len(records),
        items=records,
        skipped=skipped,
        notes=notes,
        info={"bleu_signature": bleu.signature, "asr_bleu_signature": asr_bleu.signature},
    )


S2ST = register(
    TaskSpec(
        name="s2st",
        kind="generation",
        dataset="s2st",
        description="CVSS-style speech-to-speech translation: ASR-BLEU, BLEU of the text, speaker similarity",
        run=run_s2st,
    )
)
