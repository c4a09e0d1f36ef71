"""Core attention backends: the same numbers from every backend, documents kept apart in packed rows."""

import sys
import types

import pytest
import torch
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_soda import optional
from megatron_soda.models import gpt
from megatron_soda.models.attention import FlashAttention, FlexAttention, SDPAttention
from megatron_soda.models.presets import get_preset
from megatron_soda.training.step import packed_micro_batch

HEADS, GROUPS, HEAD_DIM = 4, 2, 8


def _module(cls, params_dtype=torch.float32):
    config = types.SimpleNamespace(attention_dropout=0.0, params_dtype=params_dtype)
    return cls(config, layer_number=1, attn_mask_type=None)


def _qkv(tokens, batch=None, seed=0):
    """[s, b, heads, d] query and [s, b, groups, d] key/value (or [t, heads, d] when batch is None)."""
    generator = torch.Generator().manual_seed(seed)
    lead = (tokens,) if batch is None else (tokens, batch)
    return (
        torch.randn(*lead, HEADS, HEAD_DIM, generator=generator),
        torch.randn(*lead, GROUPS, HEAD_DIM, generator=generator),
        torch.randn(*lead, GROUPS, HEAD_DIM, generator=generator),
    )


def _packed(cu):
    cu = torch.tensor(cu, dtype=torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest, max_seqlen_kv=longest
    )


def _reference(q, k, v, keep):
    """Plain softmax attention with keys/values repeated per group: the definition, no kernel."""
    q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))
    k, v = (t.repeat_interleave(HEADS // GROUPS, dim=1) for t in (k, v))
    scores = (q @ k.transpose(-1, -2)) / HEAD_DIM**0.5
    out = scores.masked_fill(~keep, float("-inf")).softmax(-1) @ v
    return out.permute(2, 0, 1, 3).flatten(2)


CU = [0, 5, 17, 18, 30, 40]  # five documents, one of a single token


def _block_diagonal(cu, total):
    docs = torch.repeat_interleave(torch.arange(len(cu) - 1), torch.tensor(cu).diff())
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    return causal & (docs[:, None] == docs[None, :])


@pytest.mark.parametrize("cls", [SDPAttention, FlexAttention])
def test_causal_rows_match_the_definition(cls):
    q, k, v = _qkv(24, batch=3)
    out = _module(cls)(q, k, v, None)
    expected = _reference(q, k, v, torch.ones(24, 24, dtype=torch.bool).tril())
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", [SDPAttention, FlexAttention])
def test_packed_rows_attend_within_documents_only(cls):
    q, k, v = _qkv(CU[-1])
    out = _module(cls)(q, k, v, None, packed_seq_params=_packed(CU))
    assert out.shape == (CU[-1], HEADS * HEAD_DIM)
    keep = _block_diagonal(CU, CU[-1])
    expected = _reference(*(t.unsqueeze(1) for t in (q, k, v)), keep)[:, 0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # Changing a later document leaves every earlier one untouched.
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[CU[3] :] += 1.0
    out2 = _module(cls)(q2, k2, v2, None, packed_seq_params=_packed(CU))
    assert torch.equal(out2[: CU[3]], out[: CU[3]])


def test_dense_mask_replaces_causality():
    q, k, v = _qkv(16, batch=2)
    keep = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3)) > 0.3
    keep |= torch.eye(16, dtype=torch.bool)  # every query sees something
    for cls in (SDPAttention, FlexAttention):
        out = _module(cls)(q, k, v, ~keep)
        expected = torch.cat(
            [_reference(q[:, b : b + 1], k[:, b : b + 1], v[:, b : b + 1], keep[b, 0]) for b in range(2)], 1
        )
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_sdpa_trains_through_packed_rows():
    q, k, v = (t.requires_grad_() for t in _qkv(CU[-1]))
    _module(SDPAttention)(q, k, v, None, packed_seq_params=_packed(CU)).square().sum().backward()
    # The first document's keys only get gradient from that document's queries.
    assert k.grad is not None and torch.isfinite(k.grad).all() and k.grad[: CU[1]].abs().sum() > 0


def test_flex_refuses_training_on_cpu_naming_the_flag():
    q, k, v = (t.requires_grad_() for t in _qkv(8, batch=1))
    with pytest.raises(RuntimeError, match="--attention-backend flex.*sdpa"):
        _module(FlexAttention)(q, k, v, None)


@pytest.fixture
def fake_flash_attn(monkeypatch):
    """A stand-in for the flash-attn package implementing its documented functions by definition.

    It checks what flash-attn checks (layouts [b, s, h, d] / [t, h, d], int32 cu_seqlens, causal),
    so the wiring of ``FlashAttention`` is tested where the real kernels cannot run.
    """

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        assert causal and dropout_p == 0.0 and q.dim() == 4 and q.shape[2] == HEADS and k.shape[2] == GROUPS
        s = q.shape[1]
        return (
            _reference(*(t.transpose(0, 1) for t in (q, k, v)), torch.ones(s, s, dtype=torch.bool).tril())
            .unflatten(-1, (HEADS, HEAD_DIM))
            .transpose(0, 1)
        )

    def flash_attn_varlen_func(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, softmax_scale=None, causal=False
    ):
        assert causal and cu_seqlens_q.dtype == torch.int32 and q.dim() == 3
        assert max_seqlen_q == int(cu_seqlens_q.diff().max())
        keep = _block_diagonal(cu_seqlens_q.tolist(), q.shape[0])
        return _reference(*(t.unsqueeze(1) for t in (q, k, v)), keep)[:, 0].unflatten(-1, (HEADS, HEAD_DIM))

    module = types.SimpleNamespace(flash_attn_func=flash_attn_func, flash_attn_varlen_func=flash_attn_varlen_func)
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    optional.load.cache_clear()
    yield
    optional.load.cache_clear()


def test_flash_backend_calls_flash_attn_with_its_layouts(fake_flash_attn):
    flash, sdpa = _module(FlashAttention, torch.bfloat16), _module(SDPAttention)
    q, k, v = _qkv(20, batch=2)
    torch.testing.assert_close(flash(q, k, v, None), sdpa(q, k, v, None), atol=1e-5, rtol=1e-5)
    q, k, v = _qkv(CU[-1])
    packed = _packed(CU)
    torch.testing.assert_close(
        flash(q, k, v, None, packed_seq_params=packed),
        sdpa(q, k, v, None, packed_seq_params=packed),
        atol=1e-5,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="not a dense attention mask"):
        flash(*_qkv(4, batch=1), torch.zeros(1, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="--attention-backend flash needs --bf16"):
        _module(FlashAttention, torch.float32)


@pytest.mark.skipif(optional.available("flash_attn"), reason="flash-attn is installed here")
def test_flash_backend_without_flash_attn_says_how_to_get_it():
    with pytest.raises(ImportError, match="--attention-backend flash needs flash_attn.*pip install"):
        gpt.resolve_attention_backend("flash")
    with pytest.raises(ImportError, match="--attention-backend flash needs flash_attn"):
        _module(FlashAttention, torch.bfloat16)


@pytest.mark.skipif(optional.available("transformer_engine"), reason="Transformer Engine is installed here")
@pytest.mark.parametrize("name", ["te", "fused", "unfused"])
def test_te_backends_without_transformer_engine_say_how_to_get_it(name):
    with pytest.raises(ImportError, match=f"--attention-backend {name} needs transformer_engine"):
        gpt.resolve_attention_backend(name)
    assert name not in gpt.available_attention_backends()


@pytest.mark.skipif(optional.available("transformer_engine"), reason="Transformer Engine is installed here")
def test_fp8_without_transformer_engine_is_refused_naming_the_flag():
    with pytest.raises(ImportError, match="--fp8-format hybrid needs transformer_engine"):
        gpt.check_fp8("hybrid", "delayed", "auto")
    with pytest.raises(ValueError, match="--fp8-format 'e5m2'"):
        gpt.check_fp8("e5m2", "delayed", "auto")
    with pytest.raises(ValueError, match="--fp8-recipe 'fancy'"):
        gpt.check_fp8("e4m3", "fancy", "auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_backend_choice_on_a_cpu_machine():
    expected = ["auto", "sdpa", "flex"] if not optional.available("transformer_engine") else None
    if expected is not None:
        assert gpt.available_attention_backends() == expected
        assert gpt.resolve_attention_backend("auto") == "sdpa"
    with pytest.raises(ValueError, match="--attention-backend local .* use sdpa on CPU"):
        gpt.resolve_attention_backend("local")
    with pytest.raises(ValueError, match="--attention-backend 'xformers': choose one of auto, te"):
        gpt.resolve_attention_backend("xformers")


def test_help_lists_every_backend_and_what_runs_here(capsys):
    from megatron_soda.training.plan import parse_train_config

    with pytest.raises(SystemExit):
        parse_train_config(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in gpt.ATTENTION_BACKENDS:
        assert f"{name}:" in text
    for name in set(gpt.ATTENTION_BACKENDS) - set(gpt.available_attention_backends()):
        assert f"{name}: {' '.join(gpt.ATTENTION_BACKENDS[name].split())} [not runnable in this build]" in text


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_packed_rows_through_the_model_equal_each_document_alone(megatron_world, backend):
    """Documents packed into two rows give the logits each gives on its own (RoPE restarts, no leaks)."""
    shape = get_preset("tiny", num_layers=2)
    torch.manual_seed(0)
    model = gpt.build_gpt_model(
        shape, gpt.transformer_config(shape, attention_backend=backend), attention_backend=backend
    ).eval()
    generator = torch.Generator().manual_seed(1)
    rows = [[7, 12, 5], [20, 3]]  # document lengths per row of 24 (the rest is padding)
    seq = 24
    tokens, ids, documents = [], [], []
    for lengths in rows:
        row = [torch.randint(0, shape.vocab_size, (n,), generator=generator) for n in lengths]
        documents += row
        pad = seq - sum(lengths)
        tokens.append(torch.cat(row + [torch.full((pad,), shape.vocab_size)]))
        ids.append(torch.repeat_interleave(torch.arange(len(lengths) + 1), torch.tensor(lengths + [pad])))
    batch = {
        "tokens": torch.stack(tokens),
        "labels": torch.zeros(2, seq, dtype=torch.long),
        "loss_mask": torch.ones(2, seq),
        "position_ids": torch.zeros(2, seq, dtype=torch.long),
        "document_ids": torch.stack(ids),
    }
    packed = packed_micro_batch(batch)
    assert packed["packed_seq_params"].cu_seqlens_q.tolist() == [0, 7, 19, 24, 24 + 20, 24 + 23, 48]
    with torch.no_grad():
        logits = model(packed["tokens"], packed["position_ids"], None, packed_seq_params=packed["packed_seq_params"])[0]
        starts = [0, 7, 19, 24, 44]
        for start, document in zip(starts, documents):
            alone = model(document[None], torch.arange(len(document))[None], None)[0]
            torch.testing.assert_close(logits[start : start + len(document)], alone, atol=2e-5, rtol=1e-5)


def test_a_backend_must_implement_both_row_kinds():
    from megatron_soda.models.attention import CoreAttention

    class DenseOnly(CoreAttention):
        def dense(self, q, k, v, keep):
            return q

    with pytest.raises(TypeError, match="packed"):
        _module(DenseOnly)


@pytest.mark.parametrize("cls", [SDPAttention, FlexAttention])
@pytest.mark.parametrize("queries", [1, 3])
def test_a_decode_step_with_fewer_queries_than_cached_keys_attends_as_the_last_rows_of_the_full_row(cls, queries):
    """Against a KV cache the queries are the row's last positions: causality aligned to the bottom right
    (SDPA's own is_causal aligns to the top left, where one query would see only the first key)."""
    q, k, v = _qkv(10, batch=2)
    full = _reference(q, k, v, torch.ones(10, 10, dtype=torch.bool).tril())
    with torch.no_grad():
        out = _module(cls)(q[-queries:], k, v, attention_mask=None)
    assert out.shape == (queries, 2, HEADS * HEAD_DIM)
    torch.testing.assert_close(out, full[-queries:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [SDPAttention, FlexAttention])
def test_a_decode_step_with_a_padding_mask_hides_the_masked_keys(cls):
    q, k, v = _qkv(10, batch=2)
    keep = torch.ones(2, 1, 1, 10, dtype=torch.bool)
    keep[0, ..., :4] = False  # row 0 is left-padded by 4
    with torch.no_grad():
        out = _module(cls)(q[-1:], k, v, attention_mask=~keep)
    expected = _reference(q[-1:], k, v, keep[:, :, 0][:, :, None, :].expand(2, 1, 1, 10))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
