"""Core attention through ``torch.nn.functional.scaled_dot_product_attention``.

Plugs into megatron-core's ``SelfAttention`` in place of its local ``DotProductAttention``: the same
call signature, inputs ``[s, b, heads, head_dim]``, output ``[s, b, heads * head_dim]``. SDPA picks
the flash or cuDNN kernels on a GPU and the math kernel on CPU; grouped-query attention runs without
repeating keys and values (``enable_gqa``). Causal by default; a given ``attention_mask`` (megatron's
convention: True = masked, e.g. GPTDataset's document mask with ``reset_attention_mask``) replaces it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule


class SDPAttention(MegatronModule):
    def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str = "self",
                 attention_dropout: Optional[float] = None, softmax_scale: Optional[float] = None, **kwargs):
        super().__init__(config=config)
        self.layer_number = layer_number
        self.attn_mask_type = attn_mask_type
        self.softmax_scale = softmax_scale
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(self, query, key, value, attention_mask: Optional[torch.Tensor], attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if attention_bias is not None:
            raise ValueError("SDPAttention does not take an attention bias")
        if packed_seq_params is not None:
            raise ValueError(
                "packed sequences (cu_seqlens) need a varlen backend; with SDPA pass the document mask as "
                "attention_mask instead (GPTDataset reset_attention_mask=True)"
            )
        seq, batch, heads, head_dim = query.shape
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
        mask = None if attention_mask is None else ~attention_mask
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.softmax_scale,
            dropout_p=self.dropout if self.training else 0.0, enable_gqa=k.shape[1] != heads,
        )
        return out.permute(2, 0, 1, 3).reshape(seq, batch, heads * head_dim)
