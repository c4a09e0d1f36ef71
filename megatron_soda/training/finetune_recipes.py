"""Named fine-tuning recipes: SODA's speech-to-speech translation settings, as flag defaults.

``--finetune-recipe soda-s2st-sft`` (response-only loss) or ``soda-s2st-lm`` (whole-sequence LM) sets what
SODA fine-tuned its 600M base with on CVSS: Cautious AdamW with AdamC, lr 2e-5, 3% warmup, cosine decay to
0.1 x lr (SFT) or to 0 (LM), betas 0.9/0.999, eps 1e-8, weight decay 0.01, clipping 1.0, z-loss 1e-4,
sequences of 2,048 tokens in batches of 64, 5 epochs. Every value stays a flag that overrides the recipe.
The loss flags themselves come with the data (``tools/preprocess_sft.py --variant``), not the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict


@dataclass(frozen=True)
class FinetuneRecipe:
    lr: float = 2e-5
    min_lr_ratio: float = 0.1
    """the cosine decay's floor as a fraction of lr."""
    warmup_fraction: float = 0.03
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    z_loss_weight: float = 1e-4
    seq_length: int = 2048
    global_batch_size: int = 64
    epochs: float = 5.0

    def defaults(self) -> Dict[str, Any]:
        """The recipe as flag defaults, by config path."""
        return {
            "optimizer.name": "cautious",
            "optimizer.adamc": True,
            "optimizer.lr": self.lr,
            "optimizer.min_lr": self.lr * self.min_lr_ratio,
            "optimizer.adam_beta1": self.adam_beta1,
            "optimizer.adam_beta2": self.adam_beta2,
            "optimizer.adam_eps": self.adam_eps,
            "optimizer.weight_decay": self.weight_decay,
            "optimizer.clip_grad": self.clip_grad,
            "schedule.lr_decay_style": "cosine",
            "schedule.lr_warmup_fraction": self.warmup_fraction,
            "training.z_loss_weight": self.z_loss_weight,
            "training.seq_length": self.seq_length,
            "training.global_batch_size": self.global_batch_size,
            "training.train_epochs": self.epochs,
        }


FINETUNE_RECIPES = {
    "soda-s2st-sft": FinetuneRecipe(min_lr_ratio=0.1),
    "soda-s2st-lm": FinetuneRecipe(min_lr_ratio=0.0),
}
