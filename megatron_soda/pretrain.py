"""SODA pretraining on megatron-core.

    torchrun --nproc-per-node 8 -m megatron_soda.pretrain --model soda-600m \\
        --data-path 0.95 data/speech 0.05 data/text --tokenizer tokenizers/soda \\
        --tensor-model-parallel-size 1 --micro-batch-size 4 --bf16 --save ckpt --load ckpt

A SODA preset brings SODA's recipe (batch 512 x 4096, WSD schedule, Cautious AdamW with AdamC,
z-loss 1e-4); flags override it. Runs on CPU too (gloo), where tests drive real TP/PP with it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Dict, List, Optional

import torch

from megatron_soda.training.arguments import PretrainConfig, parse_args

logger = logging.getLogger("megatron_soda.pretrain")


def _layout(config: PretrainConfig):
    from megatron_soda.tokenizer import SODA_LAYOUT

    if config.tokenizer is None:
        return SODA_LAYOUT
    from megatron_soda.tokenizer import load_soda_tokenizer

    return load_soda_tokenizer(config.tokenizer).layout


def _check_data(prefixes: List[str], vocab_size: int, scan_tokens: bool) -> None:
    """Refuses missing, damaged or out-of-vocabulary datasets before any work starts.

    Every rank checks each dataset's index (cheap). The token ids (the whole ``.bin``) are scanned by
    global rank 0 alone, once per unchanged dataset (``validate_tokens_once``, records under
    ``$MEGATRON_SODA_CACHE`` or ``~/.cache/megatron_soda``): a refusal there ends the job before
    training starts, without every rank reading the corpus at every restart.
    """
    from megatron_soda.data.indexed_dataset import validate_dataset, validate_tokens_once

    cache = os.environ.get("MEGATRON_SODA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "megatron_soda"))
    scan = scan_tokens and int(os.environ.get("RANK", 0)) == 0
    for prefix in prefixes:
        if not os.path.exists(prefix + ".idx"):  # the validator's own report, without a cache lookup first
            raise ValueError(f"--data-path {prefix}: {validate_dataset(prefix)}")
        report = (validate_tokens_once(prefix, vocab_size, os.path.join(cache, "validated")) if scan
                  else validate_dataset(prefix))
        if not report.ok:
            raise ValueError(f"--data-path {prefix}: {report}")


def _model_shape(config: PretrainConfig, vocab_size: int):
    """The model to train: --model's preset, or the --load checkpoint's model; refuses a mismatch of the two."""
    from megatron_soda.models.presets import get_preset
    from megatron_soda.models.shape_record import shape_from_record
    from megatron_soda.training import checkpointing

    wanted = get_preset(config.model, vocab_size=vocab_size) if config.model else None
    if not config.load or checkpointing.latest_iteration(config.load) is None:
        if wanted is None and config.load:
            raise ValueError(f"--load {config.load} holds no checkpoint, and no --model says what to start; pass "
                             f"--model for a new run, or the directory of the checkpoint to continue")
        return wanted or get_preset("tiny", vocab_size=vocab_size)
    extra = checkpointing.read_checkpoint_info(config.load)["extra"] or {}
    if "model" not in extra:
        if wanted is None:
            raise ValueError(f"--load {config.load}: the checkpoint does not say which model it holds; pass --model")
        return wanted
    stored = shape_from_record(extra["model"], vocab_size, f"--load {config.load}")
    if wanted is not None and wanted != stored:
        raise ValueError(f"--model {config.model} differs from the model in --load {config.load} "
                         f"({extra['model'] if isinstance(extra['model'], str) else 'its recorded shape'}); "
                         f"leave --model out to continue that model")
    padded = extra.get("padded_vocab_size")
    if padded is not None and padded != stored.padded_vocab_size():
        raise ValueError(f"--load {config.load}: its embedding has {padded} rows, the model here "
                         f"{stored.padded_vocab_size()}; pass the --tokenizer it was trained with")
    return stored


class _Logger:
    """Megatron-like console lines, tensorboard and a JSONL metrics file, on one rank."""

    def __init__(self, config: PretrainConfig, active: bool):
        self.active = active
        self.writer = None
        self.metrics = None
        if active and config.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(config.tensorboard_dir)
        if active and config.metrics_file:
            self.metrics = open(config.metrics_file, "a", encoding="utf-8")

    def log(self, iteration: int, total: int, values: Dict[str, float], console: bool) -> None:
        if not self.active:
            return
        if console:
            parts = [f"iteration {iteration:8d}/{total:8d}"] + [
                f"{k}: {v:.6E}" if isinstance(v, float) and k in ("lm loss", "learning rate", "z loss", "audio loss", "text loss", "grad norm")
                else f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
                for k, v in values.items()
            ]
            print(" | ".join(parts), flush=True)
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, iteration)
                elif isinstance(value, list):  # e.g. the data mix: one curve per dataset
                    for k, item in enumerate(value):
                        self.writer.add_scalar(f"{key}/{k}", item, iteration)
        if self.metrics is not None:
            self.metrics.write(json.dumps({"iteration": iteration, **values}) + "\n")
            self.metrics.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.metrics is not None:
            self.metrics.close()


def pretrain(config: PretrainConfig) -> None:
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    from megatron_soda.data.gpt_blend import BlendConfig, achieved_mix, build_gpt_datasets, parse_data_path, samples_per_dataset
    from megatron_soda.models.gpt import transformer_config
    from megatron_soda.models.shape_record import record_for
    from megatron_soda.training import checkpointing, parallel
    from megatron_soda.training.data import micro_batches
    from megatron_soda.training.flops import mfu, peak_bf16_flops, six_n_flops_per_token, training_flops_per_token
    from megatron_soda.training.loss import LossSettings, combine_metrics
    from megatron_soda.training.optimizer import OptimizerSettings, build_megatron_optimizer
    from megatron_soda.training.schedules import apply_lr
    from megatron_soda.training.step import forward_backward

    # Everything that can be refused is refused before process groups or models exist.
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    config.check(world_size)
    vocab = _layout(config)
    shape = _model_shape(config, vocab.vocab_size)
    layout = parallel.ParallelLayout(
        config.tensor_model_parallel_size, config.pipeline_model_parallel_size,
        (shape.num_layers // config.pipeline_model_parallel_size // config.num_layers_per_virtual_pipeline_stage)
        if config.num_layers_per_virtual_pipeline_stage else None,
    )
    layout.check(world_size, shape.num_layers, shape.num_attention_heads, shape.num_query_groups)
    prefixes, weights = parse_data_path(config.data_path)
    _check_data(prefixes, vocab.vocab_size, scan_tokens=not config.skip_data_validation)
    train_iters = config.num_train_iters()
    schedule = config.lr_schedule()
    dtype = torch.bfloat16 if config.bf16 else torch.float32

    parallel.initialize(layout, seed=config.seed)
    model_config = transformer_config(
        shape, tensor_parallel=layout.tensor, pipeline_parallel=layout.pipeline,
        virtual_pipeline_parallel=layout.virtual_pipeline, params_dtype=dtype,
        attention_backend=config.attention_backend, fp8_format=config.fp8_format, fp8_recipe=config.fp8_recipe,
    )
    chunks = parallel.build_model_chunks(shape, model_config, attention_backend=config.attention_backend)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=torch.cuda.is_available())
    chunks = [DistributedDataParallel(model_config, ddp_config, module=chunk) for chunk in chunks]
    model_config.finalize_model_grads_func = finalize_model_grads
    optimizer = build_megatron_optimizer(
        chunks,
        OptimizerSettings(
            name=config.optimizer, lr=config.lr, min_lr=config.min_lr, betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_eps, weight_decay=config.weight_decay, adamc=config.adamc, clip_grad=config.clip_grad,
        ),
        bf16=config.bf16, use_distributed_optimizer=ddp_config.use_distributed_optimizer,
    )

    dp_size = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    eval_samples = (train_iters // config.eval_interval + 1) * config.eval_iters * config.global_batch_size if config.eval_interval else 0
    train_data, valid_data, _ = build_gpt_datasets(
        BlendConfig(prefixes, weights, seq_length=config.seq_length, seed=config.seed, split=config.split, layout=vocab,
                    packed_rows=config.packed_data, reset_attention_mask=config.reset_attention_mask,
                    eod_mask_loss=config.eod_mask_loss, cache_dir=config.data_cache_path),
        (train_iters * config.global_batch_size, eval_samples, 0),
    )
    eod_documents = vocab.eos_id if config.reset_attention_mask else None
    _log_mix(prefixes, weights, achieved_mix(train_data, train_iters * config.global_batch_size))

    iteration, consumed = 0, 0
    if config.load and checkpointing.latest_iteration(config.load) is not None:
        state = checkpointing.load_checkpoint(config.load, chunks, optimizer)
        iteration, consumed = state["iteration"], state["consumed_samples"]
        logger.info("resumed from %s at iteration %d (%d samples consumed)", config.load, iteration, consumed)

    last_rank = parallel_state.is_pipeline_last_stage(ignore_virtual=True) and parallel_state.get_tensor_model_parallel_rank() == 0 \
        and dp_rank == 0
    log = _Logger(config, active=last_rank)
    loss_settings = LossSettings(z_loss_weight=config.z_loss_weight, layout=vocab)
    flops_per_token = training_flops_per_token(shape, config.seq_length)
    peak_flops = peak_bf16_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    tokens_per_iter = config.global_batch_size * config.seq_length
    skipped = 0
    mix_counts = samples_per_dataset(train_data, 0, consumed)
    while iteration < train_iters:
        start = time.time()
        lr = schedule.lr_at(iteration)
        apply_lr(optimizer, lr)
        for chunk in chunks:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
        batches = micro_batches(train_data, consumed, config.global_batch_size, config.micro_batch_size, dp_rank, dp_size,
                                eod_documents)
        results = forward_backward(chunks, batches, seq_length=config.seq_length, micro_batch_size=config.micro_batch_size,
                                   loss=loss_settings)
        metrics = combine_metrics(results, parallel_state.get_data_parallel_group())
        loss = _from_last_stage(metrics["lm loss"])
        if not math.isfinite(loss):
            if config.nan_policy == "stop":
                raise FloatingPointError(f"iteration {iteration + 1}: loss is {loss}; stopping (--nan-policy stop). "
                                         "Resume from the last checkpoint with a lower --lr or --nan-policy skip.")
            skipped += 1
            logger.warning("iteration %d: loss is %s; skipping the update (--nan-policy skip)", iteration + 1, loss)
        else:
            _, grad_norm, _ = optimizer.step()
        iteration += 1
        mix_counts = mix_counts + samples_per_dataset(train_data, consumed, consumed + config.global_batch_size)
        consumed += config.global_batch_size
        elapsed = time.time() - start
        tokens_per_second = tokens_per_iter / elapsed
        values = {
            "consumed samples": consumed,
            "elapsed time per iteration (ms)": elapsed * 1000.0,
            "learning rate": lr,
            "lm loss": loss,
            # Per modality only when the batch had such tokens: a 0 would read as a perfect loss.
            **{f"{m} loss": metrics[f"{m} loss"] for m in ("audio", "text") if metrics[f"{m} tokens"]},
            "z loss": metrics["z loss"],
            "grad norm": float(grad_norm) if math.isfinite(loss) and grad_norm is not None else float("nan"),
            "tokens per second": tokens_per_second,
            "TFLOP/s per device": flops_per_token * tokens_per_second / world_size / 1e12,
            "6N TFLOP/s per device": six_n_flops_per_token(shape) * tokens_per_second / world_size / 1e12,
            "skipped iterations": skipped,
        }
        if len(mix_counts) > 1:
            values["data mix"] = [round(float(c) / float(mix_counts.sum()), 4) for c in mix_counts]
        if peak_flops is not None:
            values["MFU"] = mfu(tokens_per_second / world_size, shape, config.seq_length, peak_flops)
        log.log(iteration, train_iters, values, console=iteration % config.log_interval == 0)

        if config.eval_interval and iteration % config.eval_interval == 0 and valid_data is not None:
            start_sample = (iteration // config.eval_interval - 1) * config.eval_iters * config.global_batch_size
            eval_results = []
            for chunk in chunks:
                chunk.eval()
            with torch.no_grad():
                for k in range(config.eval_iters):
                    eval_batches = micro_batches(valid_data, start_sample + k * config.global_batch_size,
                                                 config.global_batch_size, config.micro_batch_size, dp_rank, dp_size,
                                                 eod_documents)
                    eval_results += forward_backward(chunks, eval_batches, seq_length=config.seq_length,
                                                     micro_batch_size=config.micro_batch_size, forward_only=True,
                                                     loss=loss_settings)
            for chunk in chunks:
                chunk.train()
            eval_metrics = combine_metrics(eval_results, parallel_state.get_data_parallel_group())
            log.log(iteration, train_iters, {"validation lm loss": _from_last_stage(eval_metrics["lm loss"])}, console=True)
        exiting = config.exit_interval is not None and iteration % config.exit_interval == 0
        if config.save and (exiting or iteration == train_iters or
                            (config.save_interval and iteration % config.save_interval == 0)):
            checkpointing.save_checkpoint(config.save, iteration, chunks, optimizer, {"schedule": schedule.__dict__}, consumed,
                                          {"model": record_for(shape), "vocab_size": vocab.vocab_size,
                                           "padded_vocab_size": shape.padded_vocab_size()})
        if exiting:
            logger.info("exiting at iteration %d (--exit-interval %d)", iteration, config.exit_interval)
            break
    log.close()
    parallel.destroy()


def _log_mix(prefixes: List[str], weights: Optional[List[float]], achieved: List[float]) -> None:
    """The blend's requested and achieved shares of the training samples, once at the start."""
    if len(prefixes) < 2:
        return
    total = sum(weights) if weights else None
    for k, prefix in enumerate(prefixes):
        asked = f"{weights[k] / total:.4f}" if weights else "by size"
        logger.info("data mix: %s asked %s, achieved %.4f of the training samples", prefix, asked, achieved[k])


def _from_last_stage(value: float) -> float:
    """A value only the last pipeline stage computed (the loss), on every rank, so all ranks decide alike."""
    from megatron.core import parallel_state

    tensor = torch.tensor([value if parallel_state.is_pipeline_last_stage(ignore_virtual=True) else 0.0],
                          dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")
    torch.distributed.all_reduce(tensor, group=parallel_state.get_pipeline_model_parallel_group())
    return float(tensor)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    try:
        pretrain(config)
    except (ValueError, ImportError) as error:
        print(f"pretrain: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
