"""An export behaves as Hugging Face users expect: tokenizer (pad, length, BOS as training writes it,
audio dropped by ``skip_special_tokens``), a text-generation pipeline offline, no RoPE warning on load
with bit-identical logits, and generation defaults (pad, stop tokens).

One tiny random Qwen3 model (``tests.test_convert.hf_source``) is imported and exported twice through
``megatron_soda.convert``: with the demo's tokenizer (a trained byte-level BPE, no post-processor) and
with a Llama-3-shaped base (BOS added by its own post-processor, as SODA's released tokenizer), both
extended to the same 2 x 16 audio layout. Nothing is downloaded.
"""

import json
import logging
import shutil
import socket
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from megatron_soda.convert import ExportConfig, ImportConfig, export_checkpoint
from megatron_soda.convert.hf_config import (
    TRAINED_ROPE_KEY,
    same_frequencies,
    shape_from_hf_config,
    transformers_rope_scaling,
)
from megatron_soda.convert.import_ import import_checkpoint, plan_import
from megatron_soda.data.formats import render, text_document
from megatron_soda.models.presets import RopeScaling, get_preset
from megatron_soda.tokenizer import (
    audio_indices_to_string,
    build_soda_tokenizer,
    load_soda_tokenizer,
    save_soda_tokenizer,
    train_bpe,
)
from tests.test_convert import hf_source

CODEBOOKS, CODES = 2, 16
BASE_TEXT = 300
"""Text tokens of both bases before <|begin_of_text|>/<|end_of_text|> (as Llama 3's 128,000)."""
SEQ = 256
ROPE_WARNING = "original_max_position_embeddings"


def llama3_shaped_base() -> Tokenizer:
    """Llama 3's shape at small size: byte-level BPE, then <|begin_of_text|>/<|end_of_text|> as special added
    tokens, and Llama 3's post-processor (byte-level offsets, then BOS prepended)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(alphabet)}
    vocab.update({f"<filler_{i}>": i for i in range(len(alphabet), BASE_TEXT)})
    base = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base.decoder = decoders.ByteLevel()
    base.add_special_tokens(
        [AddedToken(name, special=True, normalized=False) for name in ("<|begin_of_text|>", "<|end_of_text|>")]
    )
    base.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                special_tokens=[("<|begin_of_text|>", BASE_TEXT)],
            ),
        ]
    )
    return base


def trained_rope_config(directory, target):
    """A copy of an export whose config.json carries the trained RoPE settings verbatim, as exports wrote
    them before the rewrite (original context 8192 > max_position_embeddings 4096)."""
    shutil.copytree(directory, target)
    raw = json.loads((target / "config.json").read_text())
    trained = raw.pop(TRAINED_ROPE_KEY)
    raw["rope_parameters"] = {"rope_type": "llama3", **trained, "rope_theta": raw["rope_theta"]}
    raw["rope_scaling"] = {"rope_type": "llama3", **trained}
    (target / "config.json").write_text(json.dumps(raw, indent=2))
    return target


def transformers_4_spelling(directory, target):
    """A copy of an export with only the fields transformers 4 reads: rope_theta + rope_scaling, torch_dtype."""
    shutil.copytree(directory, target)
    raw = json.loads((target / "config.json").read_text())
    del raw["rope_parameters"], raw["dtype"]
    (target / "config.json").write_text(json.dumps(raw, indent=2))
    return target


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_users")
    texts = ["hello world, this is a test of the converter", "the quick brown fox jumps over the lazy dog"] * 20
    bases = {"demo": train_bpe(texts, vocab_size=BASE_TEXT), "llama3": llama3_shaped_base()}
    tokenizers = {}
    for name, base in bases.items():
        save_soda_tokenizer(
            build_soda_tokenizer(base, num_codebooks=CODEBOOKS, codebook_size=CODES),
            root / f"tok_{name}",
            num_codebooks=CODEBOOKS,
            codebook_size=CODES,
        )
        tokenizers[name] = load_soda_tokenizer(root / f"tok_{name}")
    layouts = {name: tok.layout for name, tok in tokenizers.items()}
    assert layouts["demo"] == layouts["llama3"]  # one model serves both
    layout = layouts["demo"]
    shape = get_preset("tiny", vocab_size=layout.vocab_size)
    hf_source(shape, root / "source", torch.float32, 5, layout)
    import_checkpoint(ImportConfig(hf=str(root / "source"), save=str(root / "ckpt"), progress=False))
    exported = {}
    for name in tokenizers:
        exported[name] = root / f"hf_{name}"
        export_checkpoint(
            ExportConfig(
                load=str(root / "ckpt"), output=str(exported[name]), tokenizer=str(root / f"tok_{name}"), progress=False
            )
        )
    return SimpleNamespace(
        root=root,
        layout=layout,
        shape=shape,
        tokenizers=tokenizers,
        exported=exported,
        trained_rope=trained_rope_config(exported["demo"], root / "trained_rope"),
        v4=transformers_4_spelling(exported["demo"], root / "v4_spelling"),
        tokens=torch.randint(0, layout.vocab_size, (SEQ,), generator=torch.Generator().manual_seed(3)),
    )


def auto_tokenizer(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


class TransformersLog(logging.Handler):
    """transformers' log records (its logger does not propagate to pytest's caplog) and Python warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        self.logger = logging.getLogger("transformers")
        self.logger.addHandler(self)
        self.caught = warnings.catch_warnings(record=True)
        self.warnings = self.caught.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self.caught.__exit__(*exc)
        self.logger.removeHandler(self)
        self.messages += [str(w.message) for w in self.warnings]


def load_model(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True).eval()


# ---- tokenizer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["demo", "llama3"])
def test_exported_tokenizer_pads_with_end_of_text_and_knows_the_models_context(exports, base):
    tokenizer = auto_tokenizer(exports.exported[base])
    config = json.loads((exports.exported[base] / "config.json").read_text())
    assert tokenizer.pad_token == "<|end_of_text|>" and tokenizer.pad_token_id == exports.layout.eos_id
    assert tokenizer.pad_token_id < config["vocab_size"] == len(tokenizer)  # a real row of the embedding
    assert tokenizer.model_max_length == config["max_position_embeddings"] == exports.shape.max_position_embeddings
    # No pad id in config.json: Qwen3 would make it the embedding's padding_idx, which never trains EOS's row.
    assert (
        config.get("pad_token_id") is None and load_model(exports.exported[base]).model.embed_tokens.padding_idx is None
    )
    batch = tokenizer(["hello", "hello world hello"], padding=True, return_tensors="pt")
    assert batch.input_ids[0, -1] == exports.layout.eos_id and batch.attention_mask[0, -1] == 0
    assert json.loads((exports.exported[base] / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "PreTrainedTokenizerFast"  # transformers 4 and 5 both know it
    )
    assert load_soda_tokenizer(exports.exported[base]).layout == exports.layout  # still a SODA tokenizer


@pytest.mark.parametrize("base", ["demo", "llama3"])
def test_hello_encodes_as_training_renders_it(exports, base):
    """Training's text document is <|begin_of_text|> text <|end_of_text|>; the tokenizer gives its start."""
    tokenizer, soda = auto_tokenizer(exports.exported[base]), exports.tokenizers[base]
    training = render(text_document(soda.encode_text("hello")), exports.layout).ids
    assert tokenizer("hello").input_ids == training[:-1].tolist()
    assert tokenizer("hello").input_ids[0] == exports.layout.bos_id
    assert tokenizer("hello", add_special_tokens=False).input_ids == soda.encode_text("hello").tolist()
    # A SODA string carrying its own <|begin_of_text|> is read without a second one.
    string = soda.ids_to_string(training)
    assert tokenizer(string, add_special_tokens=False).input_ids == training.tolist()


@pytest.mark.parametrize("base", ["demo", "llama3"])
def test_audio_ids_decode_to_nothing_when_special_tokens_are_skipped(exports, base):
    tokenizer, layout = auto_tokenizer(exports.exported[base]), exports.layout
    audio = layout.codes_to_ids(np.arange(10).reshape(CODEBOOKS, 5) % CODES).tolist()
    assert tokenizer.decode(audio, skip_special_tokens=True) == ""
    assert tokenizer.decode(audio, skip_special_tokens=False) == audio_indices_to_string(
        np.asarray(audio) - layout.audio_offset, layout.num_audio_tokens
    )
    soda = exports.tokenizers[base]
    sequence = [
        layout.bos_id,
        layout.text_start_id,
        *soda.encode_text("hello").tolist(),
        layout.text_end_id,
        layout.audio_start_id,
        *audio,
        layout.audio_end_id,
        layout.eos_id,
    ]
    assert tokenizer.decode(sequence, skip_special_tokens=True) == "hello"


# ---- transformers' pipeline and generate -------------------------------------------------------


def test_text_generation_pipeline_runs_offline_and_drops_an_audio_continuation(exports, monkeypatch):
    from transformers import pipeline

    def no_network(*args, **kwargs):
        raise OSError("the network was touched")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with TransformersLog() as log:
        generator = pipeline("text-generation", model=str(exports.exported["demo"]), device="cpu")
        text = generator("hello", max_new_tokens=4, return_full_text=False)[0]["generated_text"]
    assert isinstance(text, str)
    assert not [m for m in log.messages if ROPE_WARNING in m or "pad_token_id" in m], log.messages
    layout = exports.layout
    no_audio = list(range(layout.audio_offset))  # force an audio continuation
    out = generator("hello", max_new_tokens=6, suppress_tokens=no_audio, return_tensors=True)[0]
    new = out["generated_token_ids"][-6:]
    assert layout.is_audio(np.asarray(new)).all()
    assert (
        generator("hello", max_new_tokens=6, suppress_tokens=no_audio, return_full_text=False)[0]["generated_text"]
        == ""
    )


def test_generation_config_has_pad_and_stops_at_end_of_text_and_segment_ends(exports):
    from transformers import GenerationConfig

    layout = exports.layout
    raw = json.loads((exports.exported["demo"] / "generation_config.json").read_text())
    assert raw["eos_token_id"] == [layout.eos_id, layout.text_end_id, layout.audio_end_id]
    assert (raw["bos_token_id"], raw["pad_token_id"], raw["do_sample"]) == (layout.bos_id, layout.eos_id, False)
    with TransformersLog() as log:
        config = GenerationConfig.from_pretrained(str(exports.exported["demo"]), local_files_only=True)
    assert config.pad_token_id == layout.eos_id and not log.messages
    model = load_model(exports.exported["demo"])
    prompt = torch.tensor([[layout.bos_id, layout.text_start_id, 5, 6, layout.text_end_id, layout.audio_start_id]])
    for stop in (layout.audio_end_id, layout.text_end_id, layout.eos_id):
        only = [i for i in range(layout.vocab_size) if i != stop]
        with TransformersLog() as log, torch.no_grad():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, suppress_tokens=only)
        assert out[0, prompt.shape[1] :].tolist() == [stop]  # greedy, stopped right there, no pad warning
        assert not log.messages, log.messages


# ---- RoPE: no warning, same frequencies --------------------------------------------------------


def test_loading_the_export_emits_no_rope_warning_the_trained_spelling_did(exports):
    from transformers import AutoConfig

    for directory in (exports.exported["demo"], exports.v4):
        with TransformersLog() as log:
            AutoConfig.from_pretrained(str(directory), local_files_only=True)
            load_model(directory)
        assert not [m for m in log.messages if ROPE_WARNING in m], log.messages
    with TransformersLog() as log:  # the capture works: the trained values verbatim warn
        AutoConfig.from_pretrained(str(exports.trained_rope), local_files_only=True)
    assert any(ROPE_WARNING in m and "8192" in m for m in log.messages), log.messages


def test_rope_rewrite_keeps_frequencies_and_logits_bit_identical(exports):
    trained = load_model(exports.trained_rope)
    tokens = exports.tokens[None]
    with torch.no_grad():
        before = trained(tokens).logits
        for directory in (exports.exported["demo"], exports.v4):
            model = load_model(directory)
            assert model.config.rope_parameters["original_max_position_embeddings"] == 2048
            assert torch.equal(model.model.rotary_emb.inv_freq, trained.model.rotary_emb.inv_freq)
            assert torch.equal(model(tokens).logits, before)
    # The scaling changes these frequencies (so the comparison would see a rewrite that lost it).
    dim = exports.shape.kv_channels
    unscaled = 1.0 / exports.shape.rotary_base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
    assert not torch.allclose(unscaled, trained.model.rotary_emb.inv_freq)


def test_import_of_an_export_reads_the_trained_rope_settings_back(exports, tmp_path):
    shape, dtype = shape_from_hf_config(exports.exported["demo"])
    assert (shape, dtype) == (exports.shape, torch.float32) and shape.rope_scaling == RopeScaling()
    assert plan_import(ImportConfig(hf=str(exports.exported["demo"]), save=str(tmp_path / "ckpt"))).record == "tiny"
    assert shape_from_hf_config(exports.v4)[0] == exports.shape
    # Settings edited after the export (other frequencies): what transformers computes wins over the record.
    edited = tmp_path / "edited"
    shutil.copytree(exports.exported["demo"], edited)
    raw = json.loads((edited / "config.json").read_text())
    raw["rope_parameters"]["factor"] = raw["rope_scaling"]["factor"] = 4.0
    (edited / "config.json").write_text(json.dumps(raw))
    assert shape_from_hf_config(edited)[0].rope_scaling == RopeScaling(4.0, 0.25, 1.0, 2048)


@pytest.mark.parametrize(
    "rope, max_positions, written",
    [
        (RopeScaling(), 4096, RopeScaling(8.0, 0.25, 1.0, 2048)),  # SODA's: 8192 -> 2048, strictly below 4096
        (RopeScaling(), 8193, RopeScaling()),  # already accepted
        (RopeScaling(), 131072, RopeScaling()),
        (RopeScaling(8.0, 1.0, 4.0, 8191), 4096, RopeScaling(8.0, 1.0, 4.0, 8191)),  # odd: no exact rewrite
        (RopeScaling(8.0, 1.0, 4.0, 6144), 1000, RopeScaling(8.0, 0.125, 0.5, 768)),
    ],
)
def test_rope_rewrite_divides_by_a_power_of_two(rope, max_positions, written):
    assert transformers_rope_scaling(rope, max_positions) == written
    assert same_frequencies(rope, written)
    assert not same_frequencies(rope, RopeScaling(8.0, 1.0, 4.0, 4096))


@pytest.mark.parametrize("head_dim, theta", [(16, 500000.0), (64, 500000.0), (128, 10000.0)])
def test_rewritten_rope_gives_transformers_bit_identical_frequencies(head_dim, theta):
    """transformers' llama3 init, with SODA's settings and with their rewrite, at several head sizes."""
    from transformers import Qwen3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    def inv_freq(rope, max_positions):
        parameters = {
            "rope_type": "llama3",
            "rope_theta": theta,
            "factor": rope.factor,
            "low_freq_factor": rope.low_freq_factor,
            "high_freq_factor": rope.high_freq_factor,
            "original_max_position_embeddings": rope.original_max_position,
        }
        config = Qwen3Config(head_dim=head_dim, max_position_embeddings=max_positions, rope_parameters=parameters)
        return ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")[0]

    for max_positions in (4096, 2048, 1024):
        written = transformers_rope_scaling(RopeScaling(), max_positions)
        assert written.original_max_position < max_positions
        assert torch.equal(inv_freq(written, max_positions), inv_freq(RopeScaling(), max_positions))


def test_readme_example_runs(exports):
    """The README's Hugging Face example, on the demo export."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer, pipeline")
    code = readme[start + len("```python\n") : readme.index("```", start + 3)]
    exec(compile(code.replace('"hf/soda-600m"', repr(str(exports.exported["demo"]))), "README.md", "exec"), {})
