"""Core attention modules of ours for megatron-core's ``SelfAttention``: torch SDPA, flex, flash-attn.

They take megatron's core-attention call: ``query/key/value`` as ``[s, b, heads, head_dim]`` and
return ``[s, b, heads * head_dim]``; keys and values keep their query groups (GQA runs without
repeating them). Two kinds of rows:

- **Dense rows**: causal attention over the whole row, or a given ``attention_mask`` (megatron's
  convention: True = masked out) in its place. With a KV cache (generation) a step brings fewer
  queries than keys: the queries are the *last* positions of the row, so causality is aligned to the
  bottom right (query i sees keys ``0 .. sk - sq + i``); one query sees every cached key.
- **Packed rows** (``packed_seq_params`` in megatron's ``thd`` format): the micro-batch flattened to
  ``[t, heads, head_dim]`` with ``cu_seqlens`` marking documents; attention is causal within each
  document and never crosses one. Megatron restarts RoPE positions per document in this format.

``SDPAttention`` is the CPU path and the GPU path without extra packages (SDPA picks the flash or
cuDNN kernels there); packed rows run one document at a time. ``FlexAttention`` builds a block mask
from the documents (compiled into a Triton kernel on a GPU; forward only on CPU, where torch has
no flex backward). ``FlashAttention`` calls flash-attn (``flash_attn_varlen_func`` for packed rows).
"""

from __future__ import annotations

import abc
import functools
import weakref
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule

from megatron_soda import optional


class CoreAttention(MegatronModule, metaclass=abc.ABCMeta):
    """megatron's core-attention interface; each backend implements ``dense`` and ``packed``."""

    backend = ""

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type,
        attention_type: str = "self",
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        **kwargs,
    ):
        super().__init__(config=config)
        self.layer_number = layer_number
        self.attn_mask_type = attn_mask_type
        self.softmax_scale = softmax_scale
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    @property
    def dropout_p(self) -> float:
        return self.dropout if self.training else 0.0

    def forward(
        self,
        query,
        key,
        value,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ):
        if attention_bias is not None:
            raise ValueError(f"--attention-backend {self.backend} does not take an attention bias")
        if packed_seq_params is not None:
            if packed_seq_params.qkv_format != "thd":
                raise ValueError(
                    f"--attention-backend {self.backend}: packed rows must come in the 'thd' format, "
                    f"got {packed_seq_params.qkv_format!r}"
                )
            tokens, heads, head_dim = query.shape
            out = self.packed(query, key, value, packed_seq_params.cu_seqlens_q, packed_seq_params.max_seqlen_q)
            return out.reshape(tokens, heads * head_dim)
        seq, batch, heads, head_dim = query.shape
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
        keep = None if attention_mask is None else ~attention_mask
        out = self.dense(q, k, v, keep)
        return out.permute(2, 0, 1, 3).reshape(seq, batch, heads * head_dim)

    @abc.abstractmethod
    def dense(self, q, k, v, keep: Optional[torch.Tensor]) -> torch.Tensor:
        """``q`` ``[b, heads, sq, d]`` against ``k``/``v`` ``[b, groups, sk, d]`` (sk >= sq: a KV cache);
        ``keep`` (True = attend, ``[b or 1, 1, sq, sk]``) replaces causality when given."""

    @abc.abstractmethod
    def packed(self, q, k, v, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """``[t, heads, d]`` in and out; causal within each ``cu_seqlens`` document."""


class _PerMicroBatch:
    """A value derived from a micro-batch's cu_seqlens, built once for all layers: every layer of a
    micro-batch sees the same tensor object, so a weak reference to it identifies the micro-batch."""

    def __init__(self):
        self.ref, self.value = (lambda: None), None

    def get(self, cu_seqlens: torch.Tensor, build):
        if self.ref() is not cu_seqlens:
            self.value, self.ref = build(), weakref.ref(cu_seqlens)
        return self.value


class SDPAttention(CoreAttention):
    """``torch.nn.functional.scaled_dot_product_attention``; packed rows one document at a time."""

    backend = "sdpa"
    _bounds = _PerMicroBatch()  # document bounds as Python ints: one device sync per micro-batch

    def dense(self, q, k, v, keep):
        queries, keys = q.shape[2], k.shape[2]
        causal = keep is None and queries == keys  # SDPA's is_causal aligns to the top left
        if keep is None and queries > 1 and not causal:
            keep = cached_causality(queries, keys, q.device)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=keep,
            is_causal=causal,
            scale=self.softmax_scale,
            dropout_p=self.dropout_p,
            enable_gqa=k.shape[1] != q.shape[1],
        )

    def packed(self, q, k, v, cu_seqlens, max_seqlen):
        bounds = self._bounds.get(cu_seqlens, cu_seqlens.tolist)
        pieces = [
            self.dense(*(t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v)), None)[0].transpose(0, 1)
            for start, end in zip(bounds[:-1], bounds[1:])
            if end > start
        ]
        return torch.cat(pieces)


@functools.lru_cache(maxsize=16)
def cached_causality(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """``[queries, keys]`` True where attending is allowed, for queries at the last positions of the
    row (bottom-right causality: what a decode step against a KV cache needs)."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)


def document_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """The document index of each of ``total`` packed positions."""
    positions = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].to(positions.dtype), positions, right=True)


_compiled = {}


def _compiled_on_gpu(function, cuda: bool):
    """``function`` itself on CPU; compiled once on CUDA, where flex attention and its block masks are
    meant to run as generated kernels (uncompiled, a block mask materializes the whole t x t mask)."""
    if not cuda:
        return function
    if function not in _compiled:
        _compiled[function] = torch.compile(function, dynamic=False)
    return _compiled[function]


def _block_mask(mask_mod, batch: Optional[int], queries: int, keys: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    return _compiled_on_gpu(create_block_mask, torch.device(device).type == "cuda")(
        mask_mod, batch, None, queries, keys, device=device
    )


@functools.lru_cache(maxsize=16)
def _causal_block_mask(queries: int, keys: int, device: torch.device):
    """The (bottom-right) causal block mask of a row length: built once, not once per layer and micro-batch."""
    offset = keys - queries

    def mask_mod(b, h, qi, ki):
        return qi + offset >= ki

    return _block_mask(mask_mod, None, queries, keys, device)


def _flex(q, k, v, **kwargs):
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type != "cuda" and q.requires_grad:
        raise RuntimeError(
            "--attention-backend flex: torch has no flex_attention backward on CPU; train with "
            "--attention-backend sdpa here (flex serves forward passes on CPU)"
        )
    return _compiled_on_gpu(flex_attention, q.device.type == "cuda")(q, k, v, **kwargs)


class FlexAttention(CoreAttention):
    """``torch.nn.attention.flex_attention`` with a block mask of causality and documents."""

    backend = "flex"

    def _attend(self, q, k, v, block_mask):
        if self.dropout_p:
            raise ValueError("--attention-backend flex does not apply attention dropout; set it to 0 or use sdpa")
        return _flex(q, k, v, block_mask=block_mask, scale=self.softmax_scale, enable_gqa=k.shape[1] != q.shape[1])

    _masks = _PerMicroBatch()  # the document block mask of the current micro-batch

    def dense(self, q, k, v, keep):
        batch, _, queries, _ = q.shape
        keys = k.shape[2]
        if keep is None:
            block_mask = _causal_block_mask(queries, keys, q.device)
        else:
            keep = keep.expand(batch, 1, queries, keys)

            def mask_mod(b, h, qi, ki):
                return keep[b, 0, qi, ki]

            block_mask = _block_mask(mask_mod, batch, queries, keys, q.device)
        return self._attend(q, k, v, block_mask)

    def packed(self, q, k, v, cu_seqlens, max_seqlen):
        tokens = q.shape[0]

        def build():
            docs = document_ids(cu_seqlens, tokens)

            def mask_mod(b, h, qi, ki):
                return (docs[qi] == docs[ki]) & (qi >= ki)

            return _block_mask(mask_mod, None, tokens, tokens, q.device)

        out = self._attend(*(t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)), self._masks.get(cu_seqlens, build))
        return out[0].transpose(0, 1)


class FlashAttention(CoreAttention):
    """flash-attn 2: ``flash_attn_func`` for causal rows, ``flash_attn_varlen_func`` for packed ones.

    flash-attn (2.1 and later) aligns causality to the bottom right when there are fewer queries than
    keys, as decode steps against a KV cache need."""

    backend = "flash"

    def __init__(self, config, layer_number: int, attn_mask_type, **kwargs):
        super().__init__(config, layer_number, attn_mask_type, **kwargs)
        self.flash_attn = optional.require("flash_attn", "--attention-backend flash")
        if config.params_dtype not in (torch.bfloat16, torch.float16):
            raise ValueError("--attention-backend flash needs --bf16: flash-attn has no fp32 kernels")

    def dense(self, q, k, v, keep):
        if keep is not None:
            raise ValueError(
                "--attention-backend flash takes causal or packed rows, not a dense attention mask; "
                "document masks come as packed rows (--packed-data or --reset-attention-mask)"
            )
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, s, heads, d]
        out = self.flash_attn.flash_attn_func(
            q, k, v, dropout_p=self.dropout_p, softmax_scale=self.softmax_scale, causal=True
        )
        return out.transpose(1, 2)

    def packed(self, q, k, v, cu_seqlens, max_seqlen):
        cu_seqlens = cu_seqlens.to(torch.int32)
        return self.flash_attn.flash_attn_varlen_func(
            q,
            k,
            v,
            cu_seqlens_q=cu_seqlens,
            cu_seqlens_k=cu_seqlens,
            max_seqlen_q=max_seqlen,
            max_seqlen_k=max_seqlen,
            dropout_p=self.dropout_p,
            softmax_scale=self.softmax_scale,
            causal=True,
        )
