"""The generation benchmarks: SODA's WER (normalisation and counting), ASR of the model that learned one
utterance (conftest's session fixtures ``learned`` and ``our_model``), and TTS judged by the model's own ASR
mode or by a transformers ASR model, with speaker similarity from a local x-vector model. Every model here
is built from a config with random weights (and the learned one trained from them)."""

import json

import numpy as np
import pytest

from megatron_soda.evaluation.base import REGISTRY, EvalContext, EvalSettings
from megatron_soda.evaluation.generation_tasks import WAV_DIR, read_tts_list, run_asr, run_tts
from megatron_soda.evaluation.speaker import NO_SPEAKER_NOTE
from megatron_soda.evaluation.wer import corpus_wer, normalize, word_errors
from tests.learned import TRANSCRIPT, codec

GREEDY = {"temperature": 0.0}


# ---- WER -------------------------------------------------------------------------------------------


def test_normalisation_is_sodas_punctuation_case_and_whitespace():
    assert normalize("Hello, World!") == "hello world"
    assert normalize("don't") == normalize("dont") == "dont"
    assert normalize('  "Well-known" (a) [b] {c};:?  ’quoted‘ “double” ') == "wellknown a b c quoted double"
    assert normalize("Tab\tand\n newline") == "tab and newline"
    assert normalize("50% off & 3/4 #1") == "50% off & 3/4 #1"  # only SODA's list goes
    assert normalize("...!?") == ""
    assert word_errors("Hello, World!", "hello world") == {
        "substitutions": 0, "deletions": 0, "insertions": 0, "hits": 2, "reference_words": 2,
    }  # fmt: skip


def test_wer_counts_as_a_hand_count():
    pairs = [
        ("The cat sat on the mat.", "the cat sat on mat"),  # 1 deletion of 6 words
        ("a b c d", "a x c d e"),  # 1 substitution, 1 insertion of 4
        ("Don't stop", "DONT stop!"),  # nothing
        ("one two", ""),  # 2 deletions of 2
    ]
    assert word_errors(*pairs[1]) == {
        "substitutions": 1, "deletions": 0, "insertions": 1, "hits": 3, "reference_words": 4,
    }  # fmt: skip
    result = corpus_wer(pairs)
    assert (result["errors"], result["words"], result["n"]) == (5, 14, 4)
    assert result["wer"] == pytest.approx(5 / 14)
    assert result["mean_utterance_wer"] == pytest.approx((1 / 6 + 2 / 4 + 0 + 1) / 4)
    with pytest.raises(ValueError, match="no words after normalisation"):
        word_errors("?!", "anything")
    with pytest.raises(ValueError, match="no utterances"):
        corpus_wer([])


# ---- the tasks on a model that learned one utterance -----------------------------------------------


@pytest.fixture
def hf_model(learned):
    from megatron_soda.inference.hf_engine import hf_generator

    return hf_generator(learned["root"] / "hf", learned["layout"])


def context(learned, generator, audio=None, **options):
    return EvalContext(
        tokenizer=learned["tokenizer"],
        settings=EvalSettings(progress=False, max_tokens=512),
        generator=generator,
        codec=codec(),
        audio=audio,
        options=options,
    )


def write_lines(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


@pytest.mark.parametrize("form", ["megatron", "hf"])
def test_asr_transcribes_the_learned_utterance_and_skips_the_bad_rows_by_line(learned, form, request, tmp_path):
    """WER 0 on the utterance (greedy), through our checkpoint and through its export; the HF run also
    encodes through the evaluation's cached ``AudioEncoder``."""
    from megatron_soda.evaluation.audio import AudioEncoder

    generator = request.getfixturevalue("our_model" if form == "megatron" else "hf_model")
    mimi = codec()
    audio = AudioEncoder(mimi, {"codec": "tiny"}, tmp_path / "cache") if form == "hf" else None
    wav = str(learned["root"] / "utterance.wav")
    manifest = write_lines(
        tmp_path / "test-clean.jsonl",
        [
            json.dumps({"id": "said", "audio": wav, "text": "The cat sat on the mat."}),
            json.dumps({"id": "lost", "audio": "nowhere.flac", "text": "anything"}),
            json.dumps({"id": "mute", "audio": wav, "text": "  "}),
            json.dumps({"id": "dots", "audio": wav, "text": "..."}),
            json.dumps({"id": "part", "audio": wav, "text": TRANSCRIPT, "start": 0.0, "end": 0.8}),
        ],
    )
    result = run_asr(str(manifest), context(learned, generator, audio, **GREEDY))
    assert result.metrics == {"wer": 0.0, "mean_utterance_wer": 0.0} and result.primary == "wer"
    assert result.n == 2 and [item["id"] for item in result.items] == ["said", "part"]
    said = result.items[0]
    assert said["hypothesis"] == TRANSCRIPT and said["reference_normalized"] == TRANSCRIPT
    assert (said["errors"], said["words"], said["problems"], said["stop"]) == (0, 6, [], "<|text_end|>")
    skipped = {s.source.rsplit(":", 1)[1]: s for s in result.skipped}
    assert {line: s.reason for line, s in skipped.items()} == {
        "2": "missing_audio", "3": "empty_text", "4": "empty_text",
    }  # fmt: skip
    assert "nowhere.flac" in skipped["2"].message and str(manifest) in skipped["2"].source
    assert any("greedy" in note for note in result.notes)
    if audio is not None:
        assert audio.encoded == 1  # the same samples twice: encoded once
    assert REGISTRY["asr"].run is run_asr and REGISTRY["asr"].dataset == "asr"


def test_tts_judged_by_the_models_own_asr_says_the_text_back(learned, our_model, tmp_path):
    """Text -> speech -> transcript through the model itself: WER 0; the wav is kept, and without a
    speaker model no similarity is reported."""
    requests = write_lines(
        tmp_path / "tts.jsonl",
        [
            json.dumps({"id": "cat", "text": "The cat sat on the mat!"}),
            json.dumps({"id": "half", "text": "a dog", "reference_text": "hello there"}),
        ],
    )
    out = tmp_path / "out"
    result = run_tts(str(requests), context(learned, our_model, output_dir=str(out), **GREEDY))
    assert result.metrics == {"wer": 0.0, "mean_utterance_wer": 0.0}
    (item,) = result.items
    assert item["hypothesis"] == TRANSCRIPT and item["frames"] == learned["codes"].shape[1]
    assert item["wav"].startswith(str(out / WAV_DIR)) and "speaker_similarity" not in item
    import soundfile

    wave, rate = soundfile.read(item["wav"])
    assert rate == 24000 and len(wave) == item["frames"] * 1920
    (skip,) = result.skipped
    assert skip.reason == "missing_field" and "reference_audio and reference_text" in skip.message
    assert NO_SPEAKER_NOTE in result.notes and any("own ASR mode" in note for note in result.notes)
    assert REGISTRY["tts"].run is run_tts and REGISTRY["tts"].dataset == "tts"


def tiny_asr_model(directory):
    """A random wav2vec2 CTC model with its character tokenizer and feature extractor, saved locally."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    directory.mkdir()
    letters = "abcdefghijklmnopqrstuvwxyz'"
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: i + 5 for i, c in enumerate(letters)}}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    features = Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True)
    tokenizer = Wav2Vec2CTCTokenizer(str(directory / "vocab.json"))
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(directory)
    torch.manual_seed(0)
    Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=len(vocab), pad_token_id=0, **TINY_WAV2VEC2)).save_pretrained(directory)
    return directory


def tiny_speaker_model(directory):
    """A random WavLMForXVector with its feature extractor, saved locally."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    torch.manual_seed(0)
    config = WavLMConfig(**TINY_WAV2VEC2, tdnn_dim=(16, 16), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1))
    WavLMForXVector(config).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(directory)
    return directory


TINY_WAV2VEC2 = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=37,
    conv_dim=(16, 16),
    conv_stride=(5, 4),
    conv_kernel=(10, 4),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)


def test_tts_on_a_seed_tts_list_through_a_transformers_asr_model_and_a_speaker_model(learned, hf_model, tmp_path):
    """Seed-TTS-eval's meta.lst (voice prompt paths relative to it) through the export: the wiring of the
    ASR pipeline and the x-vector similarity (random models: any WER, a cosine in [-1, 1])."""
    import shutil

    (tmp_path / "prompt-wavs").mkdir()
    shutil.copy(learned["root"] / "utterance.wav", tmp_path / "prompt-wavs" / "cat.wav")
    meta = write_lines(
        tmp_path / "meta.lst",
        [
            f"cat-1|{TRANSCRIPT}|prompt-wavs/cat.wav|a dog ran to the park",
            f"cat-2|{TRANSCRIPT}|prompt-wavs/cat.wav|hello there|prompt-wavs/target.wav",
            "plain|the cat sat",
            "lost|hi|prompt-wavs/nowhere.wav|hello",
            "three|fields|only",
        ],
    )
    requests, rejects = read_tts_list(str(meta))
    assert [r.id for r in requests] == ["cat-1", "cat-2", "plain", "lost"]
    assert requests[0].reference_audio == str(tmp_path / "prompt-wavs" / "cat.wav")
    assert requests[2].reference_audio is None and requests[0].reference_text == TRANSCRIPT
    assert [(r.source, r.reason) for r in rejects] == [(f"{meta}:5", "bad_line")]

    asr, speaker = tiny_asr_model(tmp_path / "asr"), tiny_speaker_model(tmp_path / "xvector")
    options = dict(asr_model=str(asr), speaker_model=str(speaker), max_new_tokens=16, **GREEDY)
    result = run_tts(str(meta), context(learned, hf_model, **options))
    assert result.n == 3 and [item["id"] for item in result.items] == ["cat-1", "cat-2", "plain"]
    assert {s.source.rsplit(":", 1)[1]: s.reason for s in result.skipped} == {"4": "unreadable", "5": "bad_line"}
    assert result.metrics["wer"] >= 0 and np.isfinite(result.metrics["mean_utterance_wer"])
    assert any(f"ASR model {asr} (wav2vec2)" in note for note in result.notes)
    voiced = result.items[:2]
    assert all(item["frames"] == 2 for item in voiced), "the voice-prompted items should speak (16 tokens: 2 frames)"
    similarities = [item["speaker_similarity"] for item in voiced]
    assert all(-1.0 <= s <= 1.0 for s in similarities)
    assert result.metrics["speaker_similarity"] == pytest.approx(np.mean(similarities))
    assert NO_SPEAKER_NOTE not in result.notes and any("mean over 2 of 3 items" in note for note in result.notes)
    assert "speaker_similarity" not in result.items[2]  # no voice prompt, nothing to compare with

    import soundfile

    from megatron_soda.evaluation.generation_tasks import SpeakerSimilarity

    wave, rate = soundfile.read(learned["root"] / "utterance.wav", dtype="float32")
    same = SpeakerSimilarity(str(speaker), "cpu")(wave, rate, str(learned["root"] / "utterance.wav"))
    assert same == pytest.approx(1.0, abs=1e-5)  # a clip against itself


def test_a_list_with_nothing_to_score_is_refused_naming_the_file_and_the_first_reason(tmp_path):
    manifest = write_lines(tmp_path / "bad.jsonl", [json.dumps({"audio": "gone.wav", "text": "hi"}), "{not json"])
    with pytest.raises(ValueError, match=r"bad\.jsonl: no asr item could be scored \(2 skipped; the first: .*bad"):
        run_asr(str(manifest), EvalContext(tokenizer=None, settings=EvalSettings(), generator=object(), codec=codec()))
    with pytest.raises(ValueError, match="the tts task needs a generator"):
        run_tts(str(manifest), EvalContext(tokenizer=None, settings=EvalSettings(), codec=codec()))
