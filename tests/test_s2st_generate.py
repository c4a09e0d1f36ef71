"""``tools/generate.py --task s2st``: a manifest of source utterances -> one record per request with the
translation text and the wav of its speech, bad lines reported by file:line; our checkpoint and its
export translate alike. The model is conftest's ``learned`` one (it never saw a translation: its outputs
are whatever they are, the wiring is what is tested)."""

import json

import pytest
import soundfile

from tests.learned import TRANSCRIPT, run_tool_here
from tests.test_generation import codec_flags

SHORT = ["--max-new-tokens", 16, "--text-max-new-tokens", 6, "--temperature", 0, "--structured-decoding"]
"""greedy, two frames of speech at most and a few words of text: the wiring, quickly."""


def generate(*args, expect=0):
    run_tool_here("generate", *args, expect=expect)


def records(out):
    return [json.loads(line) for line in open(out / "generations.jsonl")]


@pytest.fixture(scope="module")
def manifest(learned, tmp_path_factory):
    root, folder = learned["root"], tmp_path_factory.mktemp("s2st_requests")
    lines = [
        json.dumps({"id": "with-text", "source_audio": str(root / "utterance.wav"), "source_language": "fr",
                    "source_text": TRANSCRIPT, "target_text": "a reference"}),
        "{not json",
        json.dumps({"id": "no-language", "source_audio": str(root / "utterance.wav")}),
        json.dumps({"id": "lost", "source_audio": "nowhere.wav", "source_language": "de"}),
        json.dumps({"id": "speech-only", "source_audio": "utterance.wav", "source_language": "de",
                    "target_language": "en"}),
        json.dumps({"id": "bad-tag", "source_audio": str(root / "utterance.wav"), "source_language": "f<r"}),
        json.dumps({"audio": str(root / "utterance.wav"), "source_language": "fr"}),
    ]  # fmt: skip
    (folder / "requests.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "utterance.wav").symlink_to(root / "utterance.wav")  # relative to the manifest
    return folder / "requests.jsonl"


@pytest.fixture(scope="module")
def translated(learned, manifest, tmp_path_factory):
    """The manifest translated by our checkpoint and by its export: ``{"--load"|"--hf": output dir}``."""
    root, outputs = learned["root"], {}
    for model in (["--load", root / "ckpt", "--tokenizer", root / "tok"], ["--hf", root / "hf"]):
        out = outputs[model[0]] = tmp_path_factory.mktemp("s2st") / model[0].strip("-")
        generate(
            "--task", "s2st", *model, "--input", manifest, "--output-dir", out, "--json", out / "summary.json",
            *SHORT, *codec_flags(), expect=1,
        )  # fmt: skip
    return outputs


def test_generate_s2st_writes_a_translation_and_a_wav_per_request_and_reports_the_bad_lines(
    learned, manifest, translated
):
    out = translated["--load"]
    written = records(out)
    assert [r["id"] for r in written] == ["with-text", "speech-only"]
    frames = learned["codes"].shape[1]
    for record in written:
        assert record["task"] == "s2st" and isinstance(record["text"], str)
        assert record["translation"]["new_tokens"] <= 6 and 1 <= record["frames"] <= 2
        wave, rate = soundfile.read(record["wav"])
        assert rate == 24000 and len(wave) == record["frames"] * 1920
        assert (
            record["speech"]["prompt_tokens"]
            == record["translation"]["prompt_tokens"] + len(record["translation"]["ids"]) + 2
        )  # the translation, <|text_end|><|audio_start|>
    with_text, speech_only = written
    assert with_text["prompt"] == (
        f"<|begin_of_text|><|audio_start|>[{frames} frames]<|audio_end|><|text_start|><language>fr</language>"
        f"{TRANSCRIPT}<|text_end|><|text_start|><language>en</language>"
    )
    assert with_text["target_text"] == "a reference" and with_text["source_language"] == "fr"
    assert speech_only["prompt"].endswith(
        "<|text_start|><language>de</language><|text_end|><|text_start|><language>en</language>"
    )
    assert speech_only["source_audio"] == str(manifest.parent / "utterance.wav")

    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] == 7 and summary["generated"] == 2
    assert summary["sampling"]["max_new_tokens"] == 16 and summary["text_sampling"]["max_new_tokens"] == 6
    assert summary["structured_decoding"] and summary["text_sampling"]["temperature"] == 0.0
    skipped = {s["source"].rsplit(":", 1)[1]: s for s in summary["skipped"]}
    assert {line: s["reason"] for line, s in skipped.items()} == {
        "2": "bad_json", "3": "missing_field", "4": "unreadable", "6": "bad_field", "7": "bad_field",
    }  # fmt: skip
    assert "needs source_audio and source_language" not in skipped["3"]["message"]
    assert "needs source_language" in skipped["3"]["message"] and "nowhere.wav" in skipped["4"]["message"]
    assert "language code" in skipped["6"]["message"] and "unknown fields ['audio']" in skipped["7"]["message"]


def test_generate_s2st_through_our_checkpoint_and_its_export_gives_the_same_ids_greedily(translated):
    ours, theirs = records(translated["--load"]), records(translated["--hf"])
    assert [r["id"] for r in ours] == [r["id"] for r in theirs] == ["with-text", "speech-only"]
    for mine, transformers in zip(ours, theirs):
        assert mine["translation"]["ids"] == transformers["translation"]["ids"] and mine["text"] == transformers["text"]
        assert mine["speech"]["ids"] == transformers["speech"]["ids"] and len(mine["speech"]["ids"]) > 0


def test_one_s2st_request_from_flags_and_the_flags_that_do_not_apply_refused_by_name(learned, tmp_path, capsys):
    from megatron_soda.inference.requests import Request
    from megatron_soda.inference.run import GenerateConfig

    root = learned["root"]
    wav = str(root / "utterance.wav")
    flags = GenerateConfig(
        task="s2st", prompt_audio=wav, prompt_text="le chat", source_language="fr", translate_into="de"
    )
    assert flags.single_request() == Request(
        id="request",
        source="flags",
        source_audio=wav,
        source_text="le chat",
        source_language="fr",
        target_language="de",
    )
    model = ["--load", root / "ckpt", "--tokenizer", root / "tok", "--output-dir", tmp_path, "--codec-random-init"]
    cases = [
        (["--task", "s2st", "--prompt-audio", wav], "flags: task s2st needs source_language"),
        (["--task", "s2st", "--prompt-audio", wav, "--source-language", "fr", "--reference-text", "x"],
         "--reference-text do not apply to --task s2st"),
        (["--task", "tts", "--prompt-text", "hi", "--translate-into", "de"],
         "--translate-into do not apply to --task tts"),
        (["--task", "tts", "--prompt-text", "hi", "--text-temperature", 0.5],
         "--text-temperature apply to --task s2st"),
        (["--task", "s2st", "--input", wav, "--text-top-p", 0], "--text-top-p must be in (0, 1]"),
    ]  # fmt: skip
    for args, message in cases:
        generate(*model, *args, expect=2)
        assert message in capsys.readouterr().err
