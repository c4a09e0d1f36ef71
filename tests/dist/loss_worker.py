"""Worker for tests/test_loss.py, run on every rank of one TP group (gloo, CPU).

    RANK=.. WORLD_SIZE=.. MASTER_ADDR=127.0.0.1 MASTER_PORT=.. python tests/dist/loss_worker.py \
        --tp 2 --parts loss,model,clip --out result.json

``loss``: ``lm_loss`` on this rank's vocabulary shard of fixed full logits (``sample_logits``), values
and the gathered gradient of the per-token mean (sum / tokens), with and without padded-row masking, and megatron's own
``vocab_parallel_cross_entropy`` on the same shard for comparison. ``model``: a tiny GPTModel's
``labels=None`` logits through ``lm_loss`` against megatron's ``labels=`` loss, and ``forward_backward``
with ``LossSettings``. ``clip``: megatron DDP + ``build_megatron_optimizer(clip_grad=1.0)`` on a toy
TP model (column- and row-parallel linears, a replicated scale) against a full copy in plain torch
clipped by hand. Rank 0 writes the JSON.
"""

import argparse
import json
import math
import warnings

import torch

# A small SODA-shaped vocabulary: 20 base ids, 4 specials (20..23), 2 x 14 audio ids (24..51), padded to 64.
BASE, CODEBOOKS, CODES, PADDED = 20, 2, 14, 64
Z_WEIGHT = 1e-2


def layout():
    from megatron_soda.tokenizer.layout import VocabLayout

    return VocabLayout(base_size=BASE, num_codebooks=CODEBOOKS, codebook_size=CODES, bos_id=0, eos_id=1)


def sample_logits(batch=2, seq=8, seed=0):
    """Full logits [b, s, PADDED], labels of every kind and a loss mask; the pad label is masked."""
    generator = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(batch, seq, PADDED, generator=generator)
    labels = torch.randint(0, BASE + 4 + CODEBOOKS * CODES, (batch, seq), generator=generator)
    labels[0, :4] = torch.tensor([1, 21, 24, 51])  # text, special, first and last audio id
    labels[1, -1] = 60  # a pad label, in the padding range
    mask = torch.ones(batch, seq)
    mask[1, -1] = 0.0
    mask[0, 5] = 0.0
    return logits, labels, mask


def _shard(full, rank, tp):
    width = full.size(-1) // tp
    return full[..., rank * width:(rank + 1) * width].contiguous()


def _gather_last(tensor, tp):
    import torch.distributed as dist
    from megatron.core import parallel_state

    parts = [torch.empty_like(tensor) for _ in range(tp)]
    dist.all_gather(parts, tensor.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)


def part_loss(tp, rank):
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from megatron_soda.training.loss import cross_entropy_and_logsumexp, lm_loss

    lay = layout()
    logits, labels, mask = sample_logits()
    out = {}
    for masked in (False, True):
        shard = _shard(logits, rank, tp).requires_grad_()
        loss_sum, num_tokens, metrics = lm_loss(shard.clone(), labels, mask, Z_WEIGHT, lay.audio_offset, lay.vocab_size,
                                                mask_padded_vocab=masked)
        loss = loss_sum / num_tokens  # the per-token mean megatron makes of the sum
        loss.backward()
        out["masked" if masked else "unmasked"] = {
            "loss": loss.item(), "num_tokens": num_tokens.item(), **{k: v.item() for k, v in metrics.items()},
            "grad": _gather_last(shard.grad, tp).tolist()}

    # Our cross-entropy against megatron's function on the same shard: values and gradients.
    upstream = torch.randn(labels.shape, generator=torch.Generator().manual_seed(5))
    ours_in = _shard(logits, rank, tp).requires_grad_()
    ce, _ = cross_entropy_and_logsumexp(ours_in.clone(), labels)
    (ce * upstream).sum().backward()
    theirs_in = _shard(logits, rank, tp).requires_grad_()
    ce_megatron = vocab_parallel_cross_entropy(theirs_in.clone(), labels)
    (ce_megatron * upstream).sum().backward()
    out["vs_megatron"] = {"ce": (ce - ce_megatron).abs().max().item(),
                          "grad": (ours_in.grad - theirs_in.grad).abs().max().item()}
    return out


def part_model(tp):
    from megatron.core import parallel_state

    from megatron_soda.models.gpt import transformer_config
    from megatron_soda.models.presets import get_preset
    from megatron_soda.training import parallel
    from megatron_soda.training.loss import LossSettings, lm_loss
    from megatron_soda.training.step import forward_backward

    lay = layout()
    shape = get_preset("tiny", vocab_size=lay.vocab_size)
    (model,) = parallel.build_model_chunks(shape, transformer_config(shape, tensor_parallel=tp), attention_backend="sdpa")
    generator = torch.Generator().manual_seed(3)
    batch, seq = 2, 16
    tokens = torch.randint(0, lay.vocab_size, (batch, seq), generator=generator)
    labels = torch.randint(0, lay.vocab_size, (batch, seq), generator=generator)
    mask = (torch.rand(batch, seq, generator=generator) > 0.2).float()
    positions = torch.arange(seq).expand(batch, -1).contiguous()
    with torch.no_grad():
        per_token = model(tokens, positions, None, labels=labels)  # megatron's own loss, [b, s]
        logits = model(tokens, positions, None, labels=None)
        _, _, metrics = lm_loss(logits, labels, mask)
    expected = ((per_token * mask).sum() / mask.sum()).item()
    settings = LossSettings(z_loss_weight=Z_WEIGHT, layout=lay)
    data = [{"tokens": tokens, "labels": labels, "loss_mask": mask, "position_ids": positions}]
    results = forward_backward([model], data, seq_length=seq, micro_batch_size=batch, loss=settings)
    audio = (labels >= lay.audio_offset) & (labels < lay.vocab_size)
    return {
        "megatron_shape": list(per_token.shape), "logits_shape": list(logits.shape),
        "megatron_lm_loss": expected, "lm_loss": metrics["lm loss"].item(),
        "step": results, "expected_audio_tokens": (mask * audio).sum().item(),
        "expected_text_tokens": (mask * ~audio).sum().item(),
        "last_stage": parallel_state.is_pipeline_last_stage(),
    }


# ---- clipping -------------------------------------------------------------------------------------

IN, HIDDEN, OUT = 6, 8, 5
CLIP = 1.0
STEPS = (3.0, 0.5, 0.002)  # loss multipliers: the first two steps clip, the last does not


def full_weights():
    generator = torch.Generator().manual_seed(11)
    return {
        "fc1.weight": 0.5 * torch.randn(HIDDEN, IN, generator=generator),
        "fc1.bias": 0.1 * torch.randn(HIDDEN, generator=generator),
        "fc2.weight": 0.5 * torch.randn(OUT, HIDDEN, generator=generator),
        "fc2.bias": 0.1 * torch.randn(OUT, generator=generator),
        "scale": 1 + 0.1 * torch.randn(OUT, generator=generator),
    }


def inputs(step):
    return torch.randn(4, 2, IN, generator=torch.Generator().manual_seed(100 + step))


def shard_of(name, full, rank, tp):
    """This rank's piece: fc1 is column-parallel (rows), fc2.weight row-parallel (columns), rest replicated."""
    if name.startswith("fc1"):
        return full.chunk(tp, dim=0)[rank]
    if name == "fc2.weight":
        return full.chunk(tp, dim=1)[rank]
    return full


def part_clip(tp, rank):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer import TransformerConfig

    from megatron_soda.training.config import OptimizerConfig
    from megatron_soda.training.optimizer import CautiousAdamW, build_megatron_optimizer

    config = TransformerConfig(num_layers=1, hidden_size=IN, num_attention_heads=2, tensor_model_parallel_size=tp,
                               use_cpu_initialization=True, gradient_accumulation_fusion=False)
    init = torch.nn.init.zeros_

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = ColumnParallelLinear(IN, HIDDEN, config=config, init_method=init, bias=True, gather_output=False)
            self.fc2 = RowParallelLinear(HIDDEN, OUT, config=config, init_method=init, bias=True,
                                         input_is_parallel=True, skip_bias_add=False)
            self.scale = torch.nn.Parameter(torch.ones(OUT))

        def forward(self, x):
            h, _ = self.fc1(x)
            y, _ = self.fc2(torch.tanh(h))
            return y * self.scale

    weights = full_weights()
    model = Toy()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(shard_of(name, weights[name], rank, tp))
    ddp = DistributedDataParallel(config, DistributedDataParallelConfig(), model)
    settings = OptimizerConfig(name="adamw", lr=0.05, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8, weight_decay=0.0, clip_grad=CLIP)
    opt = build_megatron_optimizer([ddp], settings)

    # The reference: the full model in plain torch, clipped by hand, stepped by the same AdamW.
    ref = {name: w.clone().requires_grad_() for name, w in weights.items()}
    ref_opt = CautiousAdamW(list(ref.values()), lr=0.05, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                            cautious=False, adamc=False)

    def ref_forward(x):
        h = torch.tanh(x @ ref["fc1.weight"].T + ref["fc1.bias"])
        return (h @ ref["fc2.weight"].T + ref["fc2.bias"]) * ref["scale"]

    norms, ref_norms, clipped_grad_diff = [], [], []
    for step, multiplier in enumerate(STEPS):
        x = inputs(step)
        ddp.zero_grad_buffer()
        opt.zero_grad()
        (multiplier * ddp(x).square().sum()).backward()
        ddp.finish_grad_sync()
        ok, norm, _ = opt.step()
        assert ok
        norms.append(float(norm))

        ref_opt.zero_grad()
        (multiplier * ref_forward(x).square().sum()).backward()
        total = math.sqrt(sum(p.grad.double().square().sum().item() for p in ref.values()))
        coeff = CLIP / (total + 1e-6)
        if coeff < 1.0:
            for p in ref.values():
                p.grad.mul_(coeff)
        ref_norms.append(total)
        # After the step, megatron's main grads hold the clipped gradients.
        clipped_grad_diff.append(max(
            (param.main_grad - shard_of(name.removeprefix("module."), ref[name.removeprefix("module.")].grad, rank, tp))
            .abs().max().item() for name, param in ddp.named_parameters()))
        ref_opt.step()

    param_diff = max((param - shard_of(name.removeprefix("module."), ref[name.removeprefix("module.")], rank, tp))
                     .abs().max().item() for name, param in ddp.named_parameters())
    moved = max((ref[n] - weights[n]).abs().max().item() for n in ref)
    return {"norms": norms, "ref_norms": ref_norms, "clipped_grad_diff": clipped_grad_diff,
            "param_diff": param_diff, "moved": moved}


def main():
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--parts", default="loss,model,clip")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from megatron.core import parallel_state

    from megatron_soda.training import parallel

    parallel.initialize(parallel.ParallelLayout(tensor=args.tp), seed=1234)
    rank = parallel_state.get_tensor_model_parallel_rank()
    result = {}
    for part in args.parts.split(","):
        if part == "loss":
            result["loss"] = part_loss(args.tp, rank)
        elif part == "model":
            result["model"] = part_model(args.tp)
        elif part == "clip":
            result["clip"] = part_clip(args.tp, rank)
        else:
            raise ValueError(f"unknown part {part!r}")
    if torch.distributed.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
    parallel.destroy()


if __name__ == "__main__":
    main()
