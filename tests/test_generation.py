"""Generation: the KV-cached decode loop against recomputation, our checkpoint against its Hugging Face export,
SODA's prompts, and a model that learned one utterance saying it back (continuation, ASR, TTS, the CLI)."""

import json

import numpy as np
import pytest
import torch

from megatron_soda.codec.tiny import TINY_MIMI
from megatron_soda.inference.engine import MegatronGenerator
from megatron_soda.inference.prompts import TASKS, Task, build_prompt, task_sampling
from megatron_soda.inference.sampling import SamplingConfig, candidates, sample
from megatron_soda.tokenizer import build_soda_tokenizer, save_soda_tokenizer, train_bpe
from megatron_soda.tokenizer.layout import VocabLayout
from tests.learned import TRANSCRIPT, run_tool

GREEDY = SamplingConfig(temperature=0.0)


# ---- the decode loop -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_kv_cache_decoding_equals_recomputing_the_whole_sequence_every_step(backend):
    """Prompts of different lengths in one left-padded batch: each step's logits are those of the row
    alone, recomputed from scratch without a cache (fp32 rounding apart), and greedy picks the same ids."""
    from megatron_soda.convert.solo import one_process_group
    from megatron_soda.models.gpt import build_gpt_model, transformer_config
    from megatron_soda.models.presets import get_preset

    layout = VocabLayout(base_size=300, bos_id=0, eos_id=1)
    shape = get_preset("tiny", vocab_size=layout.vocab_size)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, layout.vocab_size, n) for n in (5, 17, 1, 9)]
    steps = 8
    with one_process_group(megatron_parallel=True), torch.no_grad():
        torch.manual_seed(0)
        config = transformer_config(shape, init_method_std=0.2, attention_backend=backend)
        model = build_gpt_model(shape, config, attention_backend=backend).eval()
        seen = []
        generated = MegatronGenerator(model, layout).generate(
            prompts,
            SamplingConfig(temperature=0.0, max_new_tokens=steps),
            on_step=lambda logits: seen.append(logits.clone()),
        )
        for row, prompt in enumerate(prompts):
            ids = list(prompt)
            for step in range(steps):
                logits = model(torch.tensor([ids]), torch.arange(len(ids))[None], None)[0, -1, : layout.vocab_size]
                torch.testing.assert_close(seen[step][row], logits, rtol=1e-4, atol=1e-4)
                ids.append(int(logits.argmax()))
            assert generated[row].ids.tolist() == ids[len(prompt) :]
            assert generated[row].stop is None


def test_each_row_stops_at_its_own_stop_id_while_the_others_run_on(our_model, learned):
    layout, codes = learned["layout"], learned["codes"]
    prompts = [build_prompt(Task.ASR, layout, codes=codes), build_prompt(Task.CONTINUE, layout, codes=codes[:, :2])]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=200)
    asr, speech = our_model.generate(prompts, sampling, stop_ids=[layout.text_end_id])
    # ASR stops after the transcript; the continuation first finishes the speech (and, as the model
    # learned, its document: the next one is the text-first copy), then comes to the transcript.
    assert asr.stop == speech.stop == layout.text_end_id
    rest = layout.codes_to_ids(codes[:, 2:]).tolist() + [layout.audio_end_id]
    assert speech.ids[: len(rest)].tolist() == rest
    assert speech.ids[-len(asr.ids) :].tolist() == asr.ids.tolist() and len(speech.ids) > len(rest) + len(asr.ids)
    assert asr.batch_new_tokens == len(asr.ids) + len(speech.ids) + 2


# ---- what the model learned ------------------------------------------------------------------------


def test_a_model_that_learned_one_utterance_continues_it_transcribes_it_and_speaks_it(our_model, learned):
    layout, codes, tokenizer = learned["layout"], learned["codes"], learned["tokenizer"]
    requests = {
        Task.CONTINUE: build_prompt(Task.CONTINUE, layout, codes=codes[:, :3]),
        Task.ASR: build_prompt(Task.ASR, layout, codes=codes),
        Task.TTS: build_prompt(Task.TTS, layout, text_ids=tokenizer.encode_text(TRANSCRIPT)),
    }
    for task, prompt in requests.items():
        (result,) = our_model.generate([prompt], task_sampling(task, GREEDY), TASKS[task].stop_ids(layout))
        if task is Task.ASR:
            assert result.stop == layout.text_end_id
            assert tokenizer.decode(result.ids) == TRANSCRIPT
        else:
            assert result.stop == layout.audio_end_id
            expected = codes[:, 3:] if task is Task.CONTINUE else codes
            np.testing.assert_array_equal(layout.ids_to_codes(result.ids), expected)


def test_greedy_generation_from_our_checkpoint_equals_transformers_generate_on_its_export(our_model, learned):
    from megatron_soda.inference.hf_engine import hf_generator

    layout, codes, tokenizer = learned["layout"], learned["codes"], learned["tokenizer"]
    prompts = [
        build_prompt(Task.TTS, layout, text_ids=tokenizer.encode_text("the cat sat")),
        build_prompt(Task.ASR, layout, codes=codes[:, :6]),
        build_prompt(Task.TEXT, layout, text_ids=tokenizer.encode_text("a dog")),
        build_prompt(Task.CONTINUE, layout, codes=codes[:, :1]),
    ]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=40)
    ours = our_model.generate(prompts, sampling)
    theirs = hf_generator(learned["root"] / "hf", layout).generate(prompts, sampling)
    for mine, transformers in zip(ours, theirs):
        assert mine.ids.tolist() == transformers.ids.tolist()
        assert len(mine.ids) == 40


# ---- prompts ---------------------------------------------------------------------------------------


def test_prompts_are_sodas_strings(learned):
    tokenizer, codes, layout = learned["tokenizer"], learned["codes"], learned["layout"]
    audio = tokenizer.ids_to_string(layout.codes_to_ids(codes))
    reference = tokenizer.ids_to_string(layout.codes_to_ids(codes[:, :2]))
    expected = {
        Task.ASR: (dict(codes=codes), f"<|begin_of_text|><|audio_start|>{audio}<|audio_end|><|text_start|>"),
        Task.TTS: (
            dict(
                text_ids=tokenizer.encode_text("hello there"),
                reference_text_ids=tokenizer.encode_text("a dog"),
                reference_codes=codes[:, :2],
            ),
            f"<|begin_of_text|><|text_start|>a dog<|text_end|><|audio_start|>{reference}<|audio_end|>"
            "<|text_start|>hello there<|text_end|><|audio_start|>",
        ),
        Task.CONTINUE: (dict(codes=codes), f"<|begin_of_text|><|audio_start|>{audio}"),
        Task.TEXT: (dict(text_ids=tokenizer.encode_text("hello there")), "<|begin_of_text|>hello there"),
    }
    for task, (inputs, string) in expected.items():
        prompt = build_prompt(task, layout, **inputs)
        assert tokenizer.ids_to_string(prompt) == string, task
        np.testing.assert_array_equal(tokenizer.string_to_ids(string), prompt)
    tts_alone = build_prompt(Task.TTS, layout, text_ids=tokenizer.encode_text("hi"))
    assert tokenizer.ids_to_string(tts_alone) == "<|begin_of_text|><|text_start|>hi<|text_end|><|audio_start|>"
    with pytest.raises(ValueError, match="needs audio"):
        build_prompt(Task.ASR, layout, text_ids=[1])


def test_each_task_samples_as_soda_evaluates_unless_told_otherwise():
    asr, tts = task_sampling(Task.ASR, SamplingConfig()), task_sampling(Task.TTS, SamplingConfig(top_p=0.5))
    assert (asr.temperature, asr.top_p, asr.max_new_tokens) == (0.5, 0.8, 200)
    assert (tts.temperature, tts.top_p, tts.max_new_tokens) == (0.9, 0.5, 1500)
    layout = VocabLayout()
    assert TASKS[Task.ASR].stop_ids(layout)[0] == layout.text_end_id
    assert TASKS[Task.TTS].stop_ids(layout)[0] == layout.audio_end_id


# ---- sampling --------------------------------------------------------------------------------------


def reference_nucleus(logits, top_k, top_p):
    """transformers' order written out over a full sort: top-k, renormalise, then the smallest set of the
    most likely tokens whose probability reaches top_p."""
    probs = torch.softmax(logits.double(), -1)
    order = torch.argsort(probs, descending=True, stable=True)
    kept = torch.zeros_like(probs)
    for row in range(probs.shape[0]):
        ranked = order[row][: top_k or None]
        p = probs[row, ranked] / probs[row, ranked].sum()
        take = int((torch.cumsum(p, 0) < top_p).sum()) + 1
        kept[row, ranked[:take]] = p[:take]
    return kept / kept.sum(-1, keepdim=True)


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])  # flat (a full sort), moderate, peaked (partial sort)
@pytest.mark.parametrize("top_k, top_p", [(0, 0.8), (50, 1.0), (50, 0.8), (0, 1.0)])
def test_the_tokens_sampling_may_choose_are_transformers_nucleus(scale, top_k, top_p):
    logits = torch.randn(4, 5000, generator=torch.Generator().manual_seed(1)) * scale
    probs, ids = candidates(logits, top_k, top_p)
    ours = torch.zeros(4, 5000, dtype=torch.float64).scatter_(1, ids, probs.double())
    ours /= ours.sum(-1, keepdim=True)
    torch.testing.assert_close(ours, reference_nucleus(logits, top_k, top_p), rtol=1e-5, atol=1e-7)


def test_sampling_follows_the_nucleus_probabilities_and_the_seed():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(20000, -1)
    config = SamplingConfig(temperature=1.0, top_p=0.9)
    draws = sample(logits, config, torch.Generator().manual_seed(3))
    frequencies = torch.bincount(draws, minlength=4).double() / len(draws)
    torch.testing.assert_close(
        frequencies, torch.tensor([0.5, 0.3, 0.15, 0.0], dtype=torch.float64) / 0.95, atol=0.015, rtol=0
    )
    assert torch.equal(draws, sample(logits, config, torch.Generator().manual_seed(3)))
    assert sample(logits[:2], SamplingConfig(temperature=0.0)).tolist() == [0, 0]


# ---- the command line ------------------------------------------------------------------------------


def codec_flags():
    return ["--codec-random-init", "--codec-config", json.dumps(TINY_MIMI), "--no-progress"]


def test_generate_tool_answers_a_manifest_and_reports_the_requests_it_skips(learned, tmp_path):
    root = learned["root"]
    manifest = tmp_path / "requests.jsonl"
    manifest.write_text(
        "\n".join(
            [
                json.dumps({"id": "said", "audio": str(root / "utterance.wav"), "text": TRANSCRIPT}),
                json.dumps({"id": "lost", "audio": "nowhere.wav"}),
                "not json",
                json.dumps({"id": "mute", "text": "no audio here"}),
            ]
        )
        + "\n"
    )
    out = tmp_path / "asr"
    result = run_tool(
        "generate", "--task", "asr", "--load", root / "ckpt", "--tokenizer", root / "tok", "--input", manifest,
        "--output-dir", out, "--temperature", 0, "--json", tmp_path / "summary.json", *codec_flags(), expect=1,
    )  # fmt: skip
    (record,) = [json.loads(line) for line in open(out / "generations.jsonl")]
    assert record["id"] == "said" and record["text"] == TRANSCRIPT and record["stop"] == "<|text_end|>"
    assert record["problems"] == [] and record["tokens_per_second"] > 0
    frames = learned["codes"].shape[1]
    assert record["prompt"] == f"<|begin_of_text|><|audio_start|>[{frames} frames]<|audio_end|><|text_start|>"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["requests"] == 4 and summary["generated"] == 1
    skipped = {s["source"].rsplit(":", 1)[1]: s["message"] for s in summary["skipped"]}
    assert set(skipped) == {"2", "3", "4"}
    assert "nowhere.wav" in skipped["2"] and "needs audio" in skipped["4"]
    assert "1 of 4 requests generated" in result.stdout


def test_generate_tool_speaks_to_a_wav_from_our_checkpoint_and_from_the_export_alike(learned, tmp_path):
    import soundfile

    root = learned["root"]
    records = {}
    for model in (["--load", root / "ckpt", "--tokenizer", root / "tok"], ["--hf", root / "hf"]):
        out = tmp_path / model[0].strip("-")
        run_tool("generate", "--task", "tts", *model, "--prompt-text", TRANSCRIPT, "--temperature", 0,
                 "--output-dir", out, *codec_flags())  # fmt: skip
        (records[model[0]],) = [json.loads(line) for line in open(out / "generations.jsonl")]
    ours, theirs = records["--load"], records["--hf"]
    assert ours["ids"] == theirs["ids"] and ours["frames"] == learned["codes"].shape[1]
    wave, rate = soundfile.read(ours["wav"])
    assert rate == 24000 and len(wave) == ours["frames"] * 1920


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "asr", "--prompt-audio", "{root}/utterance.wav"], "no weights for the mimi codec"),
        (["--task", "tts", "--prompt-text", "hi", "--codec-random-init", "--hf", "{root}/hf"], "either --load"),
        (["--task", "tts", "--reference-audio", "{root}/utterance.wav", "--prompt-text", "hi", "--codec-random-init"],
         "both reference_audio and reference_text"),
        (["--task", "text", "--prompt-text", "hi", "--bf16"], "--bf16 needs a CUDA device"),
    ],
)  # fmt: skip
def test_generate_tool_refuses_what_cannot_work_naming_the_flag(learned, tmp_path, args, message):
    root = learned["root"]
    args = [a.format(root=root) for a in args]
    result = run_tool(
        "generate", "--load", root / "ckpt", "--tokenizer", root / "tok", "--output-dir", tmp_path, *args,
        expect=2,
    )  # fmt: skip
    assert message in result.stderr


def test_a_checkpoint_and_a_tokenizer_of_another_vocabulary_are_refused_by_name(learned, tmp_path):
    other = tmp_path / "other_tok"
    save_soda_tokenizer(build_soda_tokenizer(train_bpe(["something else entirely"] * 3, vocab_size=270)), other)
    result = run_tool(
        "generate", "--task", "text", "--prompt-text", "hi", "--load", learned["root"] / "ckpt", "--tokenizer", other,
        "--output-dir", tmp_path / "out", expect=1,
    )  # fmt: skip
    assert "--load" in result.stderr and "pass the tokenizer the model was trained with" in result.stderr
