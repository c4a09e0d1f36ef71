"""Fine-tuning with per-token loss flags: SODA's S2ST example keeps its response-only mask through the
writer, packing, megatron-core's sampling and the shift to labels; the loss counts exactly those labels;
fine-tuning at TP=2 gives the TP=1 losses on a blend of flagged and ordinary data; and a tiny model
fine-tuned from a checkpoint on made-up pairs translates a source into its target text and speech."""

import json

import numpy as np
import pytest
import torch

from megatron_soda.data.formats import render
from megatron_soda.data.gpt_blend import BlendConfig, build_gpt_datasets
from megatron_soda.data.indexed_dataset import DatasetWriter, read_loss_mask, validate_dataset, vocab_record
from megatron_soda.data.masked_gpt_dataset import LossMaskedGPTDataset
from megatron_soda.data.packing import pack_dataset
from megatron_soda.data.s2st_format import S2STExample, Variant, s2st_document
from megatron_soda.training.logger import iteration_records
from tests.dist import launch
from tests.test_pretrain import pretrain_process
from tests.test_s2st import examples as s2st_examples

PAIRS = [("fr", "le chat dort", "the cat sat"), ("de", "der hund bellt", "a dog ran")]


def examples(layout):
    return s2st_examples(layout, pairs=PAIRS)


def write_s2st(prefix, learned, variant, copies, pairs=None):
    """``copies`` of each made-up pair as ``variant`` documents with their loss flags; the rendered pairs."""
    tokenizer, layout = learned["tokenizer"], learned["layout"]
    rendered = [render(s2st_document(e, tokenizer, variant), layout) for e in pairs or examples(layout)]
    with DatasetWriter(
        prefix, layout.vocab_size, vocab=vocab_record(layout, learned["root"] / "tok"), loss_mask=True
    ) as w:
        for _ in range(copies):
            for r in rendered:
                w.add_document(r.ids, loss_mask=r.loss_mask)
    return rendered


def response_string(learned, example):
    tokenizer, layout = learned["tokenizer"], learned["layout"]
    target = tokenizer.ids_to_string(layout.codes_to_ids(example.target_codes))
    return (
        f"<|text_start|><language>en</language>{example.target_text}<|text_end|><|audio_start|>{target}"
        "<|audio_end|><|end_of_text|>"
    )


def trained_labels(learned, sample) -> str:
    labels = sample["labels"].numpy()[sample["loss_mask"].numpy() > 0]
    return learned["tokenizer"].ids_to_string(labels)


def test_the_response_mask_survives_writing_packing_sampling_and_the_shift_to_labels(learned, tmp_path):
    layout, example = learned["layout"], examples(learned["layout"])[0]
    (rendered,) = write_s2st(tmp_path / "sft", learned, Variant.SFT, 4, [example])
    report = validate_dataset(tmp_path / "sft", layout.vocab_size)
    assert report.ok and report.loss_mask, report
    np.testing.assert_array_equal(read_loss_mask(tmp_path / "sft"), np.tile(rendered.loss_mask, 4))
    length = len(rendered.ids)

    # megatron-core's GPTDataset: with documents of seq-length tokens, every sample is one document and the
    # next one's <|begin_of_text|>, which is never trained.
    config = BlendConfig([str(tmp_path / "sft")], seq_length=length, split="100,0,0", layout=layout)
    samples = build_gpt_datasets(config, (4, 0, 0))[0]
    assert isinstance(samples, LossMaskedGPTDataset)
    for i in range(4):
        assert trained_labels(learned, samples[i]) == response_string(learned, example)

    # Packed rows: the flags are packed with the tokens' plan; each piece trains its response only.
    pack_dataset(tmp_path / "sft", tmp_path / "packed", 2 * length + 7)
    assert validate_dataset(tmp_path / "packed").loss_mask
    config = BlendConfig([str(tmp_path / "packed")], seq_length=2 * length + 7, split="100,0,0", layout=layout)
    rows = build_gpt_datasets(dataclass_replace(config, packed_rows=True), (2, 0, 0))[0]
    for i in range(2):
        assert trained_labels(learned, rows[i]) == 2 * response_string(learned, example)

    # The whole-sequence variant trains every label.
    write_s2st(tmp_path / "lm", learned, Variant.LM, 4, [example])
    config = BlendConfig([str(tmp_path / "lm")], seq_length=length, split="100,0,0", layout=layout)
    assert build_gpt_datasets(config, (4, 0, 0))[0][0]["loss_mask"].sum() == length - 1  # all but the next BOS


def dataclass_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_the_masked_loss_is_the_mean_cross_entropy_of_the_flagged_labels(learned, tmp_path, megatron_world):
    from megatron_soda.training.loss import lm_loss

    layout = learned["layout"]
    (rendered,) = write_s2st(tmp_path / "sft", learned, Variant.SFT, 2, examples(layout)[:1])
    config = BlendConfig([str(tmp_path / "sft")], seq_length=len(rendered.ids), split="100,0,0", layout=layout)
    sample = build_gpt_datasets(config, (1, 0, 0))[0][0]
    logits = torch.randn(1, len(sample["labels"]), layout.vocab_size, generator=torch.Generator().manual_seed(0))
    labels, mask = sample["labels"][None], sample["loss_mask"][None]
    chosen = mask[0] > 0
    reference = torch.nn.functional.cross_entropy(logits[0][chosen], labels[0][chosen], reduction="sum")
    loss_sum, count, metrics = lm_loss(logits, labels, mask)  # (works in place on the logits, as megatron's)
    assert int(count) == int(rendered.loss_mask[1:].sum()) < len(rendered.ids) - 1
    torch.testing.assert_close(loss_sum, reference, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(metrics["lm loss"], reference / int(count), rtol=1e-6, atol=1e-6)


def finetune(learned, tmp_path, run, *args, world=1):
    metrics = tmp_path / f"{run}.jsonl"
    launch(
        "pretrain_entry.py",
        world,
        *("--load", learned["root"] / "ckpt", "--finetune", "--finetune-recipe", "soda-s2st-sft"),
        *("--tokenizer", learned["root"] / "tok", "--split", "100,0,0", "--seq-length", 128),
        *("--micro-batch-size", 2, "--global-batch-size", 4, "--metrics-file", metrics, "--skip-data-validation"),
        *args,
    )
    return iteration_records(metrics)


@pytest.mark.timeout(600)
def test_fine_tuning_a_blend_of_flagged_and_ordinary_data_at_tp2_takes_the_tp1_steps(learned, tmp_path):
    write_s2st(tmp_path / "sft", learned, Variant.SFT, 20)
    blend = ("--data-path", 0.5, tmp_path / "sft", 0.5, learned["root"] / "utterance", "--train-iters", 3)
    one = finetune(learned, tmp_path, "tp1", *blend)
    two = finetune(learned, tmp_path, "tp2", *blend, "--tensor-model-parallel-size", 2, world=2)
    assert [r["lm loss"] for r in two] == pytest.approx([r["lm loss"] for r in one], rel=1e-6, abs=0)
    assert [r["trained tokens"] for r in two] == [r["trained tokens"] for r in one]
    # Every label of the ordinary rows trains, a third or so of the flagged ones: fewer than all positions.
    assert all(0 < r["trained tokens"] < 4 * 128 for r in one)
    run = json.loads((tmp_path / "tp1.jsonl").read_text().splitlines()[0])
    assert run["run"]["recipe"] == "soda-s2st-sft (fine-tuning)" and run["run"]["finetune"]


@pytest.mark.timeout(900)
def test_a_model_fine_tuned_on_made_up_pairs_translates_a_source_into_its_target_text_and_speech(learned, tmp_path):
    from megatron_soda.convert.solo import one_process_group
    from megatron_soda.inference.engine import MegatronGenerator
    from megatron_soda.inference.loading import load_megatron_model
    from megatron_soda.inference.s2st import translate
    from megatron_soda.inference.sampling import SamplingConfig

    layout, tokenizer = learned["layout"], learned["tokenizer"]
    pairs = examples(layout)
    rendered = write_s2st(tmp_path / "sft", learned, Variant.SFT, 60, pairs)
    pack_dataset(tmp_path / "sft", tmp_path / "packed", 256)
    pretrain_process(
        *("--load", learned["root"] / "ckpt", "--finetune", "--finetune-recipe", "soda-s2st-sft"),
        *("--tokenizer", learned["root"] / "tok", "--data-path", tmp_path / "packed", "--packed-data"),
        *("--split", "100,0,0", "--seq-length", 256, "--micro-batch-size", 2, "--global-batch-size", 4),
        *("--train-iters", 100, "--lr", 1e-2, "--save", tmp_path / "ckpt", "--metrics-file", tmp_path / "m.jsonl"),
        "--skip-data-validation",
    )
    records = iteration_records(tmp_path / "m.jsonl")
    responses = [int(r.loss_mask[1:].sum()) for r in rendered]
    # Each step trains the responses of the examples in its rows, nothing else.
    for record in records:
        counts = {a * responses[0] + b * responses[1] for a in range(13) for b in range(13) if a + b >= 4}
        assert record["trained tokens"] in counts
    assert np.mean([r["lm loss"] for r in records[-5:]]) < 0.1 * np.mean([r["lm loss"] for r in records[:5]])

    requests = [S2STExample(e.source_codes, e.source_language, e.source_text) for e in pairs]
    with one_process_group(megatron_parallel=True, purpose="generation"):
        model, shape, _ = load_megatron_model(tmp_path / "ckpt", layout.vocab_size)
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=120)
        results = translate(MegatronGenerator(model, layout, shape.vocab_size), requests, tokenizer, greedy, greedy)
    for example, result in zip(pairs, results):
        assert result.text.stop == layout.text_end_id and result.speech.stop == layout.audio_end_id
        assert tokenizer.decode(result.text.ids) == example.target_text
        np.testing.assert_array_equal(layout.ids_to_codes(result.speech.ids), example.target_codes)


def test_the_s2st_example_checks_its_variables_and_its_fine_tuning_flags(learned):
    import os
    import subprocess
    import sys

    from tests.dist import ROOT

    script = ROOT / "examples" / "finetune_s2st.sh"
    env = {**os.environ, "PYTHON": sys.executable, "DRY_RUN": "1", "TOKENIZER": str(learned["root"] / "tok")}
    missing = subprocess.run(["bash", script], env=env, capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode != 0 and "CVSS_TRAIN" in missing.stderr
    env.update(CVSS_TRAIN="train.jsonl", CODEC_PATH="mimi", BASE_CKPT="base")
    planned = subprocess.run(["bash", script], env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "recipe: soda-s2st-sft (fine-tuning)" in planned.stdout and "memory per GPU" in planned.stdout
