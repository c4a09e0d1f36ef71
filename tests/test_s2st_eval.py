"""The s2st evaluation: sacrebleu's BLEU (evaluation/bleu.py), speaker similarity of a local x-vector model
(evaluation/speaker.py), and the task end to end through tools/evaluate.py on conftest's ``learned`` model
(it never saw a translation: the numbers are whatever they are, the report's shape is what is tested).
Every model here is built from a config with random weights; nothing downloads."""

import json

import numpy as np
import pytest
import sacrebleu
import soundfile

from megatron_soda.evaluation.bleu import corpus_bleu, sentence_bleu
from tests.learned import TRANSCRIPT, run_tool_here
from tests.test_eval_generation import TINY_WAV2VEC2
from tests.test_generation import codec_flags


def test_bleu_is_sacrebleus_corpus_bleu_with_its_signature():
    hypotheses, references = ["the cat sat on the mat", "hello there"], ["the cat sat on a mat", "hello there !"]
    ours = corpus_bleu(hypotheses, references)
    assert ours.score == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    # By hand: 1- to 4-gram matches 7/8, 4/6, 2/4, 1/3; 8 hypothesis words against 9: BP = exp(1 - 9/8).
    by_hand = 100 * np.exp(1 - 9 / 8) * (7 / 8 * 4 / 6 * 2 / 4 * 1 / 3) ** 0.25
    assert ours.score == pytest.approx(by_hand)
    assert (ours.hypothesis_length, ours.reference_length) == (8, 9)
    assert ours.signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert corpus_bleu(references, references).score == pytest.approx(100.0)
    assert sentence_bleu("hello there", "hello there") == pytest.approx(100.0)
    assert corpus_bleu(["", ""], references).score == 0.0
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        corpus_bleu(hypotheses, references[:1])


@pytest.fixture(scope="module")
def speaker_model(tmp_path_factory):
    """A random tiny WavLMForXVector saved without a feature extractor (16 kHz input is assumed)."""
    import torch
    from transformers import WavLMConfig, WavLMForXVector

    torch.manual_seed(0)
    config = WavLMConfig(**TINY_WAV2VEC2, tdnn_dim=(16, 16), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1))
    directory = tmp_path_factory.mktemp("xvector")
    WavLMForXVector(config).save_pretrained(directory)
    return directory


def test_speaker_similarity_is_one_for_the_same_clip_and_less_for_another(learned, speaker_model):
    from megatron_soda.evaluation.speaker import SpeakerSimilarity

    similarity = SpeakerSimilarity(str(speaker_model))
    assert similarity.rate == 16000
    path = learned["root"] / "utterance.wav"
    wave, rate = soundfile.read(path, dtype="float32")
    assert similarity(wave, rate, str(path)) == pytest.approx(1.0, abs=1e-5)
    assert similarity.between(wave, rate, wave.copy(), rate) == pytest.approx(1.0, abs=1e-5)
    noise = np.random.default_rng(0).normal(0, 0.3, 16000).astype(np.float32)
    other = similarity.between(wave, rate, noise, 16000)
    assert -1.0 <= other < 1.0 - 1e-4


def evaluate(*args, expect=0):
    run_tool_here("evaluate", *args, expect=expect)


def test_the_s2st_task_reports_bleu_asr_bleu_and_speaker_similarity_from_a_cvss_style_list(
    learned, speaker_model, tmp_path
):
    from megatron_soda.evaluation.base import REGISTRY
    from megatron_soda.evaluation.s2st_task import WAV_DIR, run_s2st

    root = learned["root"]
    wav = str(root / "utterance.wav")
    data = tmp_path / "cvss_fr_en.jsonl"
    lines = [
        json.dumps({"id": "a", "source_audio": wav, "source_language": "fr", "source_text": "le chat",
                    "target_text": TRANSCRIPT, "target_audio": "target.wav"}),
        json.dumps({"id": "unreferenced", "source_audio": wav, "source_language": "fr"}),
        "{not json",
        json.dumps({"id": "b", "source_audio": wav, "source_language": "de", "target_text": "a dog ran to the park"}),
        json.dumps({"id": "lost", "source_audio": "nowhere.wav", "source_language": "fr", "target_text": "hi"}),
    ]  # fmt: skip
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    evaluate(
        "--load", root / "ckpt", "--tokenizer", root / "tok", "--tasks", "s2st", "--input", f"s2st={data}",
        "--speaker-model", speaker_model, "--output-dir", out, "--temperature", 0, "--max-new-tokens", 16,
        "--text-max-new-tokens", 6, "--json", out / "summary.json", "--audio-cache", tmp_path / "cache",
        *codec_flags(),
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    entry = report["tasks"]["s2st"]
    assert entry["metric"] == "asr_bleu" and entry["value"] == entry["metrics"]["asr_bleu"]
    assert set(entry["metrics"]) == {"asr_bleu", "bleu", "speaker_similarity"}
    assert all(0.0 <= entry["metrics"][m] <= 100.0 for m in ("asr_bleu", "bleu"))
    assert -1.0 <= entry["metrics"]["speaker_similarity"] <= 1.0
    assert "tok:13a" in entry["info"]["bleu_signature"] and "tok:13a" in entry["info"]["asr_bleu_signature"]
    assert any(entry["info"]["bleu_signature"] in note for note in entry["notes"])
    assert any("own ASR mode" in note for note in entry["notes"])
    assert any("translation text: greedy, at most 6 new tokens" in note for note in entry["notes"])
    assert entry["n"] == 2 and entry["skipped"] == 3
    assert {s["source"].rsplit(":", 1)[1]: s["reason"] for s in entry["skipped_items"]} == {
        "2": "missing_field", "3": "bad_json", "5": "unreadable",
    }  # fmt: skip

    items = [json.loads(line) for line in open(entry["items_file"])]
    assert [item["id"] for item in items] == ["a", "b"]
    for item in items:
        assert {"translation", "bleu", "transcript", "asr_bleu", "speaker_similarity", "frames"} <= set(item)
        assert item["text_generation"]["new_tokens"] <= 6 and item["source_audio"] == wav
        if item["frames"]:
            assert item["wav"].startswith(str(out / WAV_DIR))
    assert items[0]["target_text"] == TRANSCRIPT and items[0]["target_audio"] == str(tmp_path / "target.wav")
    assert REGISTRY["s2st"].run is run_s2st and REGISTRY["s2st"].dataset == "s2st"
