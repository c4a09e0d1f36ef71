"""Hugging Face conversion, proven by logits, greedy tokens and bits rather than by weight names.

One 4-process launch (TP=2 x PP=2, ``tests/dist/convert_worker.py``) builds two models with
non-trivial norms and saves them as training checkpoints (optimizer state included): ``untied`` (the
``tiny`` preset: GQA with 2 query heads per group) and ``tied`` (tied embeddings, head dim 24 != hidden
64 / 4 heads). Before joining the world, its rank 0 imports two models written by transformers with
``tools/convert_checkpoint.py import``; the world then loads one of them at TP=2 x PP=2 as pretrain
does. Exports run in this process. Sequences are 256 tokens, where Llama-3 RoPE scaling changes the
logits (checked against an unscaled model). Nothing is downloaded: the tokenizer is a tiny BPE with a
2 x 16 audio block.
"""

import dataclasses
import json
import runpy
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from megatron_soda.convert import ConversionError, ExportConfig, ImportConfig, export_checkpoint
from megatron_soda.convert.hf_config import shape_from_hf_config
from megatron_soda.convert.hf_files import INDEX_FILE, HFTensors, ShardWriter
from megatron_soda.convert.import_ import plan_import
from megatron_soda.models.presets import get_preset
from megatron_soda.tokenizer import (
    audio_indices_to_string,
    build_soda_tokenizer,
    load_soda_tokenizer,
    save_soda_tokenizer,
    train_bpe,
)
from megatron_soda.training.checkpointing import read_checkpoint_info
from tests.dist import launch

TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert_checkpoint.py"
SEQ, PROMPT, NEW_TOKENS = 256, 12, 10
LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
REL_TOLERANCE = 1e-5
"""Largest |logit difference| / largest |logit| accepted: fp32 rounding, far below any layout mistake."""


def cli(argv):
    return runpy.run_path(str(TOOL), run_name="convert_checkpoint")["main"](list(map(str, argv)))


def hf_source(shape, directory, dtype, seed, layout, max_shard_size="5GB"):
    """A random ``Qwen3ForCausalLM`` of ``shape`` with non-trivial norms, saved by transformers."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.ffn_hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_query_groups,
        head_dim=shape.kv_channels,
        rms_norm_eps=1e-5,
        max_position_embeddings=4096,
        tie_word_embeddings=shape.tie_embeddings,
        rope_parameters=dict(LLAMA3),
        bos_token_id=layout.bos_id,
        eos_token_id=layout.eos_id,
    )
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.3 * torch.randn(param.shape))
    model.to(dtype).save_pretrained(directory, max_shard_size=max_shard_size)
    return directory


def to_transformers_4_spelling(directory):
    """Rewrites config.json as transformers 4 wrote it: rope_theta + rope_scaling, torch_dtype."""
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    rope = raw.pop("rope_parameters")
    raw["rope_theta"] = rope.pop("rope_theta")
    raw["rope_scaling"] = rope
    raw["torch_dtype"] = raw.pop("dtype")
    path.write_text(json.dumps(raw))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    texts = ["hello world, this is a test of the converter", "the quick brown fox jumps over the lazy dog"] * 20
    save_soda_tokenizer(
        build_soda_tokenizer(train_bpe(texts, vocab_size=300), num_codebooks=2, codebook_size=16),
        root / "tok",
        num_codebooks=2,
        codebook_size=16,
    )
    layout = load_soda_tokenizer(root / "tok").layout
    vocab = layout.vocab_size
    shapes = {
        "untied": get_preset("tiny", vocab_size=vocab),
        "tied": get_preset("tiny", vocab_size=vocab, tie_embeddings=True, kv_channels=24),
    }
    sources = {
        "tied_fp32": hf_source(shapes["tied"], root / "hf_tied_fp32", torch.float32, 1, layout),
        "untied_bf16": hf_source(
            shapes["untied"], root / "hf_untied_bf16", torch.bfloat16, 2, layout, max_shard_size="100KB"
        ),
    }
    to_transformers_4_spelling(sources["untied_bf16"])
    tokens = torch.randint(0, vocab, (SEQ,), generator=torch.Generator().manual_seed(3))
    imported = {name: root / f"imported_{name}" for name in sources}
    spec = {
        "vocab": vocab,
        "tokens": tokens.tolist(),
        "prompt": PROMPT,
        "new_tokens": NEW_TOKENS,
        "out": str(root / "results.pt"),
        "imports": [
            [
                "import",
                "--hf",
                str(sources["tied_fp32"]),
                "--save",
                str(imported["tied_fp32"]),
                "--tensor-model-parallel-size",
                "2",
                "--pipeline-model-parallel-size",
                "2",
                "--no-progress",
            ],
            ["import", "--hf", str(sources["untied_bf16"]), "--save", str(imported["untied_bf16"]), "--no-progress"],
        ],
        "save": [
            {
                "name": "untied",
                "shape": dataclasses.asdict(shapes["untied"]),
                "record": "tiny",
                "dir": str(root / "ckpt_untied"),
            },
            {
                "name": "tied",
                "shape": dataclasses.asdict(shapes["tied"]),
                "record": dataclasses.asdict(shapes["tied"]),
                "dir": str(root / "ckpt_tied"),
            },
        ],
        "load": [{"name": "imported_tied_fp32", "dir": str(imported["tied_fp32"])}],
    }
    (root / "spec.json").write_text(json.dumps(spec))
    launch("convert_worker.py", 4, "--spec", root / "spec.json", "--tp", 2, "--pp", 2, timeout=240)
    results = torch.load(root / "results.pt")

    exported = {"untied": root / "hf_untied", "tied": root / "hf_tied"}
    export_checkpoint(
        ExportConfig(
            load=str(root / "ckpt_untied"), output=str(exported["untied"]), tokenizer=str(root / "tok"), progress=False
        )
    )
    export_checkpoint(
        ExportConfig(
            load=str(root / "ckpt_tied" / "iter_0000005"),
            output=str(exported["tied"]),
            tokenizer=str(root / "tok"),
            max_shard_size="100KB",
            progress=False,
        )
    )
    round_trips = {name: root / f"round_trip_{name}" for name in sources}
    for name in sources:
        export_checkpoint(
            ExportConfig(
                load=str(imported[name]), output=str(round_trips[name]), tokenizer=str(root / "tok"), progress=False
            )
        )
    return SimpleNamespace(
        root=root,
        tokenizer=root / "tok",
        layout=layout,
        vocab=vocab,
        shapes=shapes,
        tokens=tokens,
        results=results,
        exported=exported,
        sources=sources,
        imported=imported,
        round_trips=round_trips,
    )


def hf_model(directory, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(directory), dtype=torch.float32, local_files_only=True, **kwargs
    ).eval()


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(tokens[None]).logits[0]


def relative_difference(ours, theirs):
    return float((ours - theirs).abs().max() / ours.abs().max())


# ---- megatron -> Hugging Face ------------------------------------------------------------------


@pytest.mark.parametrize("case", ["untied", "tied"])
def test_export_of_a_tp2_pp2_checkpoint_gives_our_models_logits_at_every_position(world, case):
    ours = world.results[case]["logits"]
    assert ours.shape == (SEQ, world.shapes[case].padded_vocab_size())
    theirs = hf_logits(hf_model(world.exported[case]), world.tokens)
    assert theirs.shape == (SEQ, world.vocab)
    difference = relative_difference(ours[:, : world.vocab], theirs)
    print(
        f"{case}: max |logit diff| {float((ours[:, : world.vocab] - theirs).abs().max()):.3e}, "
        f"max |logit| {float(ours.abs().max()):.3f}, relative {difference:.2e}"
    )
    assert difference < REL_TOLERANCE


def test_the_logit_check_sees_rope_scaling(world):
    """Transformers loads the export with Llama-3 scaling, and the logits check would catch its absence."""
    from transformers import AutoConfig

    model = hf_model(world.exported["untied"])
    assert model.config.rope_parameters["rope_type"] == "llama3" and model.config.rms_norm_eps == 1e-5
    config = AutoConfig.from_pretrained(str(world.exported["untied"]), local_files_only=True)
    config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    unscaled = hf_logits(hf_model(world.exported["untied"], config=config), world.tokens)
    ours = world.results["untied"]["logits"][:, : world.vocab]
    difference = relative_difference(ours, unscaled)
    print(f"without RoPE scaling: relative logit difference {difference:.2e}")
    assert difference > 100 * REL_TOLERANCE


@pytest.mark.parametrize(
    "case, directory", [("untied", "exported"), ("tied", "exported"), ("imported_tied_fp32", "sources")]
)
def test_greedy_generation_with_transformers_equals_greedy_generation_with_our_model(world, case, directory):
    folder = getattr(world, directory)[case.removeprefix("imported_")]
    prompt = world.tokens[None, :PROMPT]
    with torch.no_grad():
        out = hf_model(folder).generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            pad_token_id=world.layout.eos_id,
        )
    theirs, ours = out[0, PROMPT:].tolist(), world.results[case]["greedy"]
    assert len(ours) == NEW_TOKENS
    # transformers stops at the export's stop tokens (<|end_of_text|>, <|text_end|>, <|audio_end|>; the
    # source's: <|end_of_text|>); our loop does not.
    stops = {world.layout.eos_id, world.layout.text_end_id, world.layout.audio_end_id}
    if directory == "sources":
        stops = {world.layout.eos_id}
    assert theirs == ours[: len(theirs)] and (len(theirs) == NEW_TOKENS or theirs[-1] in stops)


def test_export_writes_shards_an_index_and_a_config_both_transformers_versions_read(world):
    tied = world.exported["tied"]
    index = json.loads((tied / INDEX_FILE).read_text())
    files = sorted({*index["weight_map"].values()})
    assert len(files) > 1 and files == [
        f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)
    ]
    assert sorted(p.name for p in tied.glob("*.safetensors")) == files
    tensors = HFTensors(tied)
    assert "lm_head.weight" not in tensors.shapes and tensors.shapes["model.embed_tokens.weight"] == (world.vocab, 64)
    assert "lm_head.weight" in HFTensors(world.exported["untied"]).shapes  # untied: never dropped
    raw = json.loads((tied / "config.json").read_text())
    assert (raw["head_dim"], raw["rms_norm_eps"], raw["tie_word_embeddings"], raw["vocab_size"]) == (
        24,
        1e-5,
        True,
        world.vocab,
    )
    # Llama-3 scaling with the same frequencies, original context below max_position_embeddings (4096): no
    # transformers warning (tests/test_hf_users.py); the trained settings kept for the import.
    written = {**LLAMA3, "low_freq_factor": 0.25, "high_freq_factor": 1.0, "original_max_position_embeddings": 2048}
    assert raw["rope_parameters"] == written and raw["rope_theta"] == 500000.0
    assert raw["rope_scaling"] == {k: v for k, v in written.items() if k != "rope_theta"}
    assert raw["megatron_soda_rope_scaling"] == {
        k: v for k, v in LLAMA3.items() if k not in ("rope_type", "rope_theta")
    }
    assert (raw["bos_token_id"], raw["eos_token_id"]) == (world.layout.bos_id, world.layout.eos_id)
    generation = json.loads((tied / "generation_config.json").read_text())
    layout = world.layout
    assert generation["eos_token_id"] == [layout.eos_id, layout.text_end_id, layout.audio_end_id]
    assert generation["pad_token_id"] == layout.eos_id
    assert shape_from_hf_config(tied) == (world.shapes["tied"], torch.float32)


def test_exported_files_are_created_with_the_umasks_mode(world):
    """safetensors writes 0600; an export is a model directory for others to read, like every file open() makes."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in world.exported["untied"].iterdir() if path.is_file()}
    assert any(name.endswith(".safetensors") for name in modes)
    assert set(modes.values()) == {0o666 & ~mask}, modes


def test_exported_tokenizer_round_trips_a_soda_string(world):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(world.exported["untied"]), local_files_only=True)
    text = (
        "<|begin_of_text|><|text_start|>hello world<|text_end|><|audio_start|>"
        + audio_indices_to_string(np.arange(32)[::-1], 32)
        + "<|audio_end|><|end_of_text|>"
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == load_soda_tokenizer(world.tokenizer).string_to_ids(text).tolist()
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert len(tokenizer) == world.vocab


# ---- Hugging Face -> megatron ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tied_fp32", "untied_bf16"])
def test_hugging_face_to_megatron_to_hugging_face_is_bit_identical(world, name):
    source, back = HFTensors(world.sources[name]), HFTensors(world.round_trips[name])
    assert sorted(source.shapes) == sorted(back.shapes)
    for key in source.shapes:
        before, after = source.get(key), back.get(key)
        assert before.dtype == after.dtype and before.shape == after.shape and torch.equal(before, after), key
    dtype = torch.float32 if name == "tied_fp32" else torch.bfloat16
    assert {source.get(key).dtype for key in source.shapes} == {dtype}
    assert shape_from_hf_config(world.round_trips[name]) == shape_from_hf_config(world.sources[name])


def test_imported_model_loaded_at_tp2_pp2_gives_the_hugging_face_models_logits(world):
    logits = world.results["imported_tied_fp32"]["logits"]
    theirs = hf_logits(hf_model(world.sources["tied_fp32"]), world.tokens)
    difference = relative_difference(logits[:, : world.vocab], theirs)
    print(f"imported tied: relative logit difference {difference:.2e}")
    assert difference < REL_TOLERANCE
    assert torch.count_nonzero(logits[:, world.vocab :]) == 0  # padding rows imported as zeros (tied: output too)


def test_imported_checkpoint_is_model_only_and_names_its_model(world):
    tied = read_checkpoint_info(world.imported["tied_fp32"])
    assert (tied["iteration"], tied["consumed_samples"], tied["model_only"], tied["optimizer_metadata"]) == (
        0,
        0,
        True,
        None,
    )
    assert tied["extra"]["model"] == dataclasses.asdict(world.shapes["tied"])  # no preset has this shape
    assert tied["extra"]["padded_vocab_size"] == 1024 and tied["extra"]["vocab_size"] == world.vocab
    assert read_checkpoint_info(world.imported["untied_bf16"])["extra"]["model"] == "tiny"


# ---- errors, dry runs, atomic outputs ----------------------------------------------------------


def edited_copy(source, target, edit):
    """A copy of a single-file HF directory whose tensors ``edit`` changes in place."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    tensors = load_file(str(target / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def test_import_names_file_tensor_and_both_shapes_of_a_wrong_tensor(world, tmp_path):
    name = "model.layers.1.self_attn.k_norm.weight"
    broken = edited_copy(world.sources["tied_fp32"], tmp_path / "hf", lambda t: t.update({name: torch.ones(23)}))
    with pytest.raises(ConversionError) as error:
        plan_import(ImportConfig(hf=str(broken), save=str(tmp_path / "ckpt")))
    assert f"{broken / 'model.safetensors'}: tensor {name} has shape (23,), but config.json implies (24,)" in str(
        error.value
    )
    assert not (tmp_path / "ckpt").exists()


def test_import_refuses_missing_and_unknown_tensors(world, tmp_path):
    def edit(tensors):
        tensors.pop("model.layers.0.mlp.up_proj.weight")
        tensors["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2)

    broken = edited_copy(world.sources["tied_fp32"], tmp_path / "hf", edit)
    assert cli(["import", "--hf", broken, "--save", tmp_path / "ckpt"]) == 2
    with pytest.raises(
        ConversionError,
        match=r"missing tensors: model\.layers\.0\.mlp\.up_proj\.weight; tensors a Qwen3 "
        r"model of this config does not have: model\.layers\.0\.mlp\.extra_proj",
    ):
        plan_import(ImportConfig(hf=str(broken), save=str(tmp_path / "ckpt")))
    # An untied config never borrows the embedding for a missing LM head.
    untied = tmp_path / "untied"
    shutil.copytree(world.sources["tied_fp32"], untied)
    raw = json.loads((untied / "config.json").read_text())
    (untied / "config.json").write_text(json.dumps({**raw, "tie_word_embeddings": False}))
    with pytest.raises(
        ConversionError, match=r"missing tensors \(config.json says tie_word_embeddings=false\): lm_head"
    ):
        plan_import(ImportConfig(hf=str(untied), save=str(tmp_path / "ckpt")))


def test_a_tied_models_lm_head_may_be_stored_only_as_a_copy_of_the_embedding(world, tmp_path):
    copy = edited_copy(
        world.sources["tied_fp32"],
        tmp_path / "copy",
        lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].clone()}),
    )
    assert plan_import(ImportConfig(hf=str(copy), save=str(tmp_path / "ckpt"))).shape == world.shapes["tied"]
    other = edited_copy(
        world.sources["tied_fp32"],
        tmp_path / "other",
        lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"] + 1}),
    )
    with pytest.raises(ConversionError, match="tie_word_embeddings=true, but lm_head.weight differs"):
        plan_import(ImportConfig(hf=str(other), save=str(tmp_path / "ckpt")))


def test_import_keeps_every_llama3_rope_setting_and_refuses_an_undefined_one(world, tmp_path):
    from megatron_soda.models.presets import RopeScaling

    other = tmp_path / "hf"
    shutil.copytree(world.sources["tied_fp32"], other)
    raw = json.loads((other / "config.json").read_text())
    raw["rope_parameters"].update(low_freq_factor=2.0, original_max_position_embeddings=2048)
    (other / "config.json").write_text(json.dumps(raw))
    shape = plan_import(ImportConfig(hf=str(other), save=str(tmp_path / "ckpt"))).shape
    assert shape.rope_scaling == RopeScaling(
        factor=8.0, low_freq_factor=2.0, high_freq_factor=4.0, original_max_position=2048
    )
    raw["rope_parameters"]["low_freq_factor"] = 4.0  # == high_freq_factor: the interpolation band is empty
    (other / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConversionError, match=r"0 < low_freq_factor < high_freq_factor .*low_freq_factor=4.0"):
        plan_import(ImportConfig(hf=str(other), save=str(tmp_path / "ckpt")))


def relabeled_copy(world, source, target, record):
    """The tied model of ``source`` saved again with ``extra["model"] = record``, through the checkpoint
    API (so in whichever layout this megatron-core version gives the common state)."""
    from megatron_soda.convert.solo import one_process_group
    from megatron_soda.models.gpt import build_gpt_model, transformer_config
    from megatron_soda.training.checkpointing import load_checkpoint, save_checkpoint

    shape = world.shapes["tied"]
    with one_process_group(megatron_parallel=True):
        model = build_gpt_model(shape, transformer_config(shape), attention_backend="sdpa")
        load_checkpoint(source, [model], None, load_rng=False)
        save_checkpoint(
            target,
            5,
            [model],
            None,
            {},
            0,
            {"model": record, "padded_vocab_size": shape.padded_vocab_size()},
            model_only=True,
        )
    return target


def test_export_refuses_a_checkpoint_whose_tensors_are_not_its_named_model(world, tmp_path):
    # The tied, head-dim-24 model's tensors under the untied preset's name.
    copy = relabeled_copy(world, world.root / "ckpt_tied", tmp_path / "ckpt", "tiny")
    with pytest.raises(ConversionError) as error:
        export_checkpoint(ExportConfig(load=str(copy), output=str(tmp_path / "hf"), tokenizer=str(world.tokenizer)))
    message = str(error.value)
    assert message.startswith(
        f"checkpoint {copy / 'iter_0000005'} does not hold the model its extra state names (preset 'tiny':"
    )
    assert "missing tensors: output_layer.weight" in message
    assert (
        "tensor decoder.layers.self_attention.linear_qkv.weight has shape (2, 192, 64), "
        "but the model needs (2, 128, 64)" in message
    )
    assert not (tmp_path / "hf").exists()
    # A tokenizer other than the model's is refused by its size.
    copy = relabeled_copy(world, world.root / "ckpt_tied", tmp_path / "ckpt2", dataclasses.asdict(world.shapes["tied"]))
    small = tmp_path / "tok"
    save_soda_tokenizer(
        build_soda_tokenizer(train_bpe(["tiny text"] * 5, vocab_size=280), num_codebooks=2, codebook_size=16),
        small,
        num_codebooks=2,
        codebook_size=16,
    )
    with pytest.raises(ValueError, match=r"has a vocabulary of 338, the tokenizer \d+: pass the tokenizer"):
        export_checkpoint(ExportConfig(load=str(copy), output=str(tmp_path / "hf"), tokenizer=str(small)))


def test_dry_runs_print_the_mapping_with_shapes_and_write_nothing(world, tmp_path, capsys):
    assert (
        cli(
            [
                "export",
                "--load",
                world.root / "ckpt_untied",
                "--tokenizer",
                world.tokenizer,
                "--output",
                tmp_path / "hf",
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "decoder.layers.self_attention.linear_qkv.weight[1] (128, 64) -> model.layers.1.self_attn.q_proj.weight "
        "(64, 64), model.layers.1.self_attn.k_proj.weight (32, 64), model.layers.1.self_attn.v_proj.weight (32, 64)"
    ) in out
    assert "decoder.layers.mlp.linear_fc1.weight[0] (256, 64) -> model.layers.0.mlp.gate_proj.weight (128, 64), " in out
    assert f"output_layer.weight (1024, 64) -> lm_head.weight ({world.vocab}, 64)" in out
    assert cli(["import", "--hf", world.sources["untied_bf16"], "--save", tmp_path / "ckpt", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"embedding.word_embeddings.weight (1024, 64) <- model.embed_tokens.weight ({world.vocab}, 64)" in out
    assert "recorded as preset 'tiny'" in out and "dtype bfloat16" in out
    assert list(tmp_path.iterdir()) == []


def test_cli_help_describes_both_directions(capsys):
    with pytest.raises(SystemExit) as done:
        cli(["--help"])
    assert done.value.code == 0 and "{export,import}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli(["export", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--max-shard-size", "--dry-run", "--tokenizer", "--dtype"))


def test_failed_export_leaves_no_output_and_no_debris(world, tmp_path, monkeypatch):
    output, written = tmp_path / "hf", []
    real_add = ShardWriter.add

    def failing_add(self, name, tensor):
        assert not output.exists()  # never visible under its name while being written
        written.append(name)
        if len(written) == 5:
            raise OSError("disk full")
        real_add(self, name, tensor)

    monkeypatch.setattr(ShardWriter, "add", failing_add)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(
            ExportConfig(
                load=str(world.root / "ckpt_untied"),
                output=str(output),
                max_shard_size="50KB",
                tokenizer=str(world.tokenizer),
                progress=False,
            )
        )
    assert list(tmp_path.iterdir()) == []


def test_killed_exports_debris_is_no_output_and_an_existing_output_is_replaced_only_when_asked(world, tmp_path):
    output = tmp_path / "hf"
    debris = tmp_path / ".hf.incomplete"  # what a killed export leaves
    debris.mkdir()
    (debris / "model-00001-of-00002.safetensors").write_bytes(b"partial")
    # No --tokenizer: the vocabulary the imported checkpoint records, and no tokenizer files.
    config = ExportConfig(load=str(world.imported["tied_fp32"]), output=str(output), progress=False, dtype="bf16")
    export_checkpoint(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    assert set(HFTensors(output).dtypes.values()) == {"BF16"} and not (output / "tokenizer.json").exists()
    with pytest.raises(ConversionError, match="exists; pass --overwrite"):
        export_checkpoint(config)
    export_checkpoint(dataclasses.replace(config, overwrite=True, dtype=None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    assert set(HFTensors(output).dtypes.values()) == {"F32"}
    with pytest.raises(ConversionError, match="would replace the checkpoint"):
        export_checkpoint(dataclasses.replace(config, output=config.load, overwrite=True))


@pytest.mark.timeout(300)
def test_pretraining_continues_from_an_import_of_a_model_that_is_no_preset(world, tmp_path):
    """`pretrain --load` takes the imported model's recorded shape; a different --model is refused."""
    from megatron_soda.data.indexed_dataset import write_dataset
    from megatron_soda.data.synthetic import random_documents
    from megatron_soda.pretrain import pretrain
    from megatron_soda.training.logger import iteration_records
    from megatron_soda.training.plan import parse_train_config

    write_dataset(
        tmp_path / "data", *random_documents(np.random.default_rng(0), 200, (20, 80), world.vocab), world.vocab
    )
    run = tmp_path / "run"
    shutil.copytree(world.imported["tied_fp32"], run)
    args = [
        "--tokenizer",
        world.tokenizer,
        "--data-path",
        tmp_path / "data",
        "--split",
        "100,0,0",
        "--seq-length",
        32,
        "--micro-batch-size",
        2,
        "--global-batch-size",
        2,
        "--train-iters",
        2,
        "--lr",
        1e-3,
        "--lr-decay-style",
        "cosine",
        "--load",
        run,
        "--save",
        run,
        "--metrics-file",
        tmp_path / "metrics.jsonl",
    ]
    launch("pretrain_entry.py", 1, *args)
    lines = iteration_records(tmp_path / "metrics.jsonl")
    assert [line["iteration"] for line in lines] == [1, 2] and all(np.isfinite(line["lm loss"]) for line in lines)
    info = read_checkpoint_info(run)
    assert info["iteration"] == 2 and not info["model_only"]
    assert info["extra"]["model"] == dataclasses.asdict(world.shapes["tied"])

    config = parse_train_config([str(a) for a in args + ["--model", "tiny"]])
    with pytest.raises(ValueError, match=f"the model given by flags differs from the model in --load {run}"):
        pretrain(config)
