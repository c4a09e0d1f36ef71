"""Which trained model a tool runs, in either form: our checkpoint (``--load``) or a Hugging Face export
(``--hf``), with its tokenizer and how it runs (the flags ``tools/generate.py`` and ``tools/evaluate.py``
share), and the one place that opens it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Optional

from megatron_soda.checks import check_dir
from megatron_soda.flags import flag


@dataclass
class ModelSource:
    """The model flags: --load [--ckpt-step] --tokenizer, or --hf; --attention-backend, --bf16."""

    load: Optional[str] = None
    """our checkpoint directory (pretrain's --save; any TP/PP layout, loaded at TP=1)."""
    ckpt_step: Optional[int] = None
    """the checkpoint iteration to load (default: the latest)."""
    hf: Optional[str] = None
    """a Hugging Face export directory (tools/convert_checkpoint.py export), run through transformers."""
    tokenizer: Optional[str] = None
    """SODA tokenizer directory (default: the --hf directory, which holds its tokenizer when exported with one)."""
    attention_backend: str = field(default="sdpa", metadata=flag(choices=("sdpa", "flex")))
    """core attention of our model (both take padding masks and KV-cache steps)."""
    bf16: bool = False
    """run the model in bfloat16 (CUDA only)."""

    @property
    def tokenizer_dir(self) -> Optional[str]:
        return self.tokenizer or self.hf

    @property
    def tokenizer_flag(self) -> str:
        return "--tokenizer" if self.tokenizer else "--hf"

    def check(self, model: bool = True) -> None:
        """The flags name one model that exists and a tokenizer (``model=False``: a tokenizer only)."""
        if model and (self.load is None) == (self.hf is None):
            raise ValueError("give the model as either --load (our checkpoint) or --hf (a Hugging Face export)")
        if self.load is not None:
            check_dir("--load", self.load, hint=" (pretrain's --save directory)")
        elif self.hf is not None:
            check_dir("--hf", self.hf, ("config.json",))
        if self.ckpt_step is not None and self.load is None:
            raise ValueError("--ckpt-step selects an iteration of --load; an --hf export has one")
        if self.tokenizer_dir is None:
            raise ValueError("--tokenizer is required with --load (an --hf export may hold its own)")
        check_dir(self.tokenizer_flag, self.tokenizer_dir, ("tokenizer.json",))
        self.dtype()

    def dtype(self):
        import torch

        from megatron_soda.device import device_info

        if self.bf16 and not device_info().cuda:
            raise ValueError("--bf16 needs a CUDA device; run in fp32 on the CPU (drop --bf16)")
        return torch.bfloat16 if self.bf16 else torch.float32

    def load_tokenizer(self):
        from megatron_soda.data.text_pipeline import load_tokenizer

        return load_tokenizer(self.tokenizer_flag, self.tokenizer_dir)

    @contextlib.contextmanager
    def open(self, layout, purpose: str) -> Iterator["OpenModel"]:
        """The model, alive for the block (ours inside a world of one process)."""
        from megatron_soda.device import device_info

        if self.hf is not None:
            from megatron_soda.inference.hf_engine import load_hf_model

            model = load_hf_model(self.hf, self.dtype(), device_info().current())
            yield OpenModel("hf", model, model.config.vocab_size, {"form": "hf", "path": self.hf})
            return
        from megatron_soda.convert.solo import one_process_group
        from megatron_soda.inference.loading import load_megatron_model

        with one_process_group(megatron_parallel=True, purpose=purpose):
            model, shape, info = load_megatron_model(
                self.load,
                layout.vocab_size,
                iteration=self.ckpt_step,
                attention_backend=self.attention_backend,
                params_dtype=self.dtype(),
            )
            description = {"form": "megatron", "path": self.load, "iteration": info["iteration"]}
            yield OpenModel("megatron", model, shape.vocab_size, description)


@dataclass
class OpenModel:
    form: str
    """``megatron`` or ``hf``."""
    model: object
    vocab_size: int
    """the true vocabulary (our output layer has padding rows past it)."""
    description: dict

    def generator(self, layout):
        if self.form == "hf":
            from megatron_soda.inference.hf_engine import HFGenerator

            return HFGenerator(self.model, layout)
        from megatron_soda.inference.engine import MegatronGenerator

        return MegatronGenerator(self.model, layout, self.vocab_size)

    def scorer(self):
        from megatron_soda.evaluation.scoring import HFScorer, MegatronScorer

        return HFScorer(self.model) if self.form == "hf" else MegatronScorer(self.model, self.vocab_size)
