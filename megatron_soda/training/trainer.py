"""The training loop as a library: build, step, evaluate, save, in the spirit of torchtitan's Trainer.

    plan = plan_run(parse_train_config(argv))     # every setting checked, nothing built yet
    trainer = Trainer(plan)
    trainer.setup()                               # process groups, model chunks, optimizer, data, --load
    trainer.train()                               # or: trainer.train_step(batches), trainer.evaluate(), ...
    trainer.close()

``setup`` is ``setup_model_and_optimizer`` + ``setup_data`` + ``load_checkpoint`` (Megatron-LM's
names); a caller with its own batches (the training benchmark, tests) calls only the first and then
``train_step``. Every entry point (``pretrain``, fine-tuning, ``bench/bench_train.py``) goes through
this class, so there is one build and one step.

Numerics that do not depend on the layout: the loss is a per-token mean over the whole global batch
(``training/loss.py``), the cautious mask's mean is over whole tensors (``training/optimizer.py``),
data order is a function of consumed samples alone (``training/data.py``), and validation reads one
fixed set of ``--eval-samples`` sequences per blend.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from megatron_soda.device import device_info
from megatron_soda.flags import as_flat_dict
from megatron_soda.training.plan import RunPlan
from megatron_soda.training.stopping import StopRequests

logger = logging.getLogger("megatron_soda.trainer")


class Trainer:
    """One training run on this rank; see the module docstring for the call order."""

    def __init__(self, plan: RunPlan):
        self.plan = plan
        self.config = plan.config
        self.model: List[torch.nn.Module] = []
        """This rank's model chunks (DDP-wrapped): one, or one per virtual pipeline stage."""
        self.optimizer = None
        self.iteration = 0
        self.consumed_samples = 0
        self.skipped_iterations = 0
        self.train_data = None
        self.valid_data = None
        self.log: Optional[Any] = None
        self.benchmarks = None
        """``evaluation.in_training.TrainingEvaluator`` of --eval-tasks-data, if given."""
        self._mix_counts = None
        t = self.config.training
        self.stops = StopRequests(
            t.exit_signal if t.exit_signal_handler else None, t.exit_duration_in_mins, started=time.time()
        )
        """--exit-signal-handler / --exit-duration-in-mins (the budget counts from here); installed by ``setup``."""
        self.stop_reason: Optional[str] = None
        """Why ``train`` stopped before --train-iters on request (a signal, the time budget), or None."""

    # ---- build ----------------------------------------------------------------------------------

    def setup(self) -> None:
        self.stops.install()
        self.setup_model_and_optimizer()
        self.setup_data()
        self.setup_benchmarks()
        self.load_checkpoint()
        self._setup_logger()

    def setup_benchmarks(self) -> None:
        """--eval-tasks-data: the prepared likelihood benchmarks, scored at this layout during the run."""
        e, t = self.config.eval, self.config.training
        if e.eval_tasks_data:
            from megatron_soda.evaluation.in_training import TrainingEvaluator

            self.benchmarks = TrainingEvaluator(
                e.eval_tasks_data,
                self.plan.vocab,
                tasks=e.eval_tasks,
                seq_length=t.seq_length,
                micro_batch_size=t.micro_batch_size,
                vocab_size=self.plan.vocab.vocab_size,
            )

    def setup_model_and_optimizer(self) -> None:
        """Process groups, this rank's model chunks in megatron DDP, and the megatron optimizer."""
        from megatron.core.distributed import (
            DistributedDataParallel,
            DistributedDataParallelConfig,
            finalize_model_grads,
        )

        from megatron_soda.models.gpt import transformer_config
        from megatron_soda.training import parallel
        from megatron_soda.training.loss import LossSettings
        from megatron_soda.training.optimizer import build_megatron_optimizer

        plan, t = self.plan, self.config.training
        parallel.initialize(plan.layout, seed=t.seed, timeout_minutes=self.config.parallel.distributed_timeout_minutes)
        dtype = torch.bfloat16 if t.bf16 else torch.float32
        model_config = transformer_config(
            plan.shape,
            tensor_parallel=plan.layout.tensor,
            pipeline_parallel=plan.layout.pipeline,
            virtual_pipeline_parallel=plan.layout.virtual_pipeline,
            sequence_parallel=self.config.parallel.sequence_parallel,
            params_dtype=dtype,
            init_method_std=self.config.model.init_method_std,
            attention_backend=self.config.model.attention_backend,
            fp8_format=t.fp8_format,
            fp8_recipe=t.fp8_recipe,
            recompute_granularity=t.recompute,
            recompute_method=t.recompute_method,
            recompute_num_layers=t.recompute_num_layers,
            use_cpu_initialization=self.config.parallel.use_cpu_initialization,
        )
        chunks = parallel.build_model_chunks(
            plan.shape, model_config, attention_backend=self.config.model.attention_backend, init_seed=t.seed
        )
        if model_config.use_cpu_initialization:  # drawn on the CPU: to the device (a no-op without CUDA)
            chunks = [chunk.to(device_info().current()) for chunk in chunks]
        p = self.config.parallel
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            use_distributed_optimizer=plan.distributed_optimizer,
            overlap_grad_reduce=p.overlap_grad_reduce,
            bucket_size=p.ddp_bucket_size,
        )
        self.model = [DistributedDataParallel(model_config, ddp_config, module=chunk) for chunk in chunks]
        model_config.finalize_model_grads_func = finalize_model_grads
        if p.overlap_grad_reduce:
            # The schedules hold the reduction back for all but the last micro-batch (no_sync) and start
            # each chunk's as its backward ends (grad_sync); finalize_model_grads waits for them.
            model_config.no_sync_func = _one_or_list([chunk.no_sync for chunk in self.model])
            model_config.grad_sync_func = _one_or_list([chunk.start_grad_sync for chunk in self.model])
        self.optimizer = build_megatron_optimizer(
            self.model, self.config.optimizer, bf16=t.bf16, use_distributed_optimizer=plan.distributed_optimizer
        )
        self.loss_settings = LossSettings(z_loss_weight=t.z_loss_weight, layout=plan.vocab)

    def setup_data(self) -> None:
        """The blended training and validation datasets (megatron-core GPTDatasets or packed rows)."""
        from megatron_soda.data.gpt_blend import BlendConfig, achieved_mix, build_gpt_datasets

        plan, d, t = self.plan, self.config.data, self.config.training
        eval_samples = self.config.validation_samples if self.config.validation_interval else 0
        self.train_data, self.valid_data, _ = build_gpt_datasets(
            BlendConfig(
                plan.prefixes,
                plan.weights,
                seq_length=t.seq_length,
                seed=t.seed,
                split=d.split,
                layout=plan.vocab,
                packed_rows=d.packed_data,
                reset_attention_mask=d.reset_attention_mask,
                eod_mask_loss=d.eod_mask_loss,
                cache_dir=d.data_cache_path,
            ),
            (plan.train_iters * t.global_batch_size, eval_samples, 0),
        )
        if self.config.validation_interval and self.valid_data is None:
            raise ValueError(
                f"--eval-interval {self.config.eval.eval_interval} needs a validation split; "
                f"--split {d.split} gives none"
            )
        self._log_mix(achieved_mix(self.train_data, plan.train_iters * t.global_batch_size))

    def load_checkpoint(self) -> None:
        """--load: everything (resume), or weights only (--finetune); --no-load-optim / --no-load-rng."""
        from megatron_soda.data.gpt_blend import samples_per_dataset
        from megatron_soda.training import checkpointing

        ckpt, plan = self.config.checkpoint, self.plan
        if plan.resume is not None:
            finetune = ckpt.finetune
            state = checkpointing.load_checkpoint(
                ckpt.load,
                self.model,
                self.optimizer,
                load_optimizer=ckpt.load_optim and not finetune,
                load_rng=ckpt.load_rng and not finetune,
            )
            if finetune:
                restored = "weights only (--finetune): iteration, data, optimizer and schedule start at 0"
            else:
                self.iteration, self.consumed_samples = state["iteration"], state["consumed_samples"]
                model_only = " (a weights-only checkpoint)" if plan.resume["model_only"] else ""
                parts = [
                    "weights",
                    "optimizer state" if state["optimizer_restored"] else f"no optimizer state{model_only}: fresh",
                    "RNG states" if state["rng_restored"] else f"no RNG states{model_only}: this run's seed",
                    f"iteration {self.iteration}",
                    f"{self.consumed_samples} consumed samples",
                ]
                restored = ", ".join(parts)
            logger.info("loaded %s (iteration %d): %s", plan.resume["path"], plan.resume["iteration"], restored)
        if self.train_data is not None:
            self._mix_counts = samples_per_dataset(self.train_data, 0, self.consumed_samples)

    def _setup_logger(self) -> None:
        from megatron.core import parallel_state

        from megatron_soda.training.logger import RunLogger

        reporting = (
            parallel_state.is_pipeline_last_stage(ignore_virtual=True)
            and parallel_state.get_tensor_model_parallel_rank() == 0
            and parallel_state.get_data_parallel_rank() == 0
        )
        resumed = self.iteration if (self.plan.resume is not None and not self.config.checkpoint.finetune) else None
        lg = self.config.logging
        self.log = RunLogger(
            active=reporting,
            metrics_file=lg.metrics_file,
            tensorboard_dir=lg.tensorboard_dir,
            arguments=as_flat_dict(self.config),
            wandb={"project": lg.wandb_project, "name": lg.wandb_exp_name, "dir": lg.wandb_save_dir},
            run=self.plan.record(),
            resumed_at=resumed,
        )

    # ---- one step -------------------------------------------------------------------------------

    def micro_batches(
        self, dataset, first_sample: int, num_samples: int, executor=None
    ) -> List[Dict[str, torch.Tensor]]:
        """This data-parallel rank's micro-batches of samples ``[first_sample, first_sample + num_samples)``."""
        from megatron.core import parallel_state

        from megatron_soda.training.data import micro_batches

        d, t = self.config.data, self.config.training
        return micro_batches(
            dataset,
            first_sample,
            num_samples,
            t.micro_batch_size,
            parallel_state.get_data_parallel_rank(),
            parallel_state.get_data_parallel_world_size(),
            self.plan.vocab.eos_id if d.reset_attention_mask else None,
            executor,
        )

    def _forward_backward(self, batches, forward_only: bool = False) -> Dict[str, float]:
        from megatron.core import parallel_state

        from megatron_soda.training.loss import combine_metrics
        from megatron_soda.training.step import forward_backward

        results = forward_backward(
            self.model,
            batches,
            seq_length=self.config.training.seq_length,
            micro_batch_size=self.config.training.micro_batch_size,
            forward_only=forward_only,
            loss=self.loss_settings,
        )
        return _from_last_stage(combine_metrics(results, parallel_state.get_data_parallel_group()))

    def train_step(self, batches: List[Dict[str, torch.Tensor]]) -> Dict[str, float]:
        """One optimizer step over ``batches`` (this rank's micro-batches of one global batch).

        Returns the step's metrics (per-token losses over the global batch, on every rank), plus
        ``grad norm`` and ``learning rate``. A non-finite loss stops the run or skips the update
        (``--nan-policy``); the iteration counts either way.
        """
        from megatron_soda.training.schedules import apply_lr

        lr = self.plan.schedule.lr_at(self.iteration)
        apply_lr(self.optimizer, lr)
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        metrics = self._forward_backward(batches)
        loss, grad_norm = metrics["lm loss"], float("nan")
        if not math.isfinite(loss):
            if self.config.training.nan_policy == "stop":
                raise FloatingPointError(
                    f"iteration {self.iteration + 1}: loss is {loss}; stopping (--nan-policy "
                    "stop). Resume from the last checkpoint with a lower --lr or --nan-policy skip."
                )
            self.skipped_iterations += 1
            logger.warning(
                "iteration %d: loss is %s; skipping the update (--nan-policy skip)", self.iteration + 1, loss
            )
        else:
            success, norm, _ = self.optimizer.step()
            if not success:  # megatron skipped the update (inf/NaN gradients)
                self.skipped_iterations += 1
            # With --clip-grad 0 megatron computes no norm (None or 0.0): not logged rather than misread.
            grad_norm = float(norm) if norm and self.config.optimizer.clip_grad > 0 else float("nan")
        self.iteration += 1
        self.consumed_samples += self.config.training.global_batch_size
        return {**metrics, "grad norm": grad_norm, "learning rate": lr}

    # ---- evaluation -----------------------------------------------------------------------------

    def evaluate(self) -> Dict[str, float]:
        """Per-token validation losses (all, audio, text) over the first ``--eval-samples`` validation sequences.

        The set is the same whatever the batch size or layout: it is read in chunks of micro-batch x
        data-parallel sequences, and the chunk that runs past ``--eval-samples`` has its extra
        sequences' loss masks zeroed, so they count for nothing in the per-token mean.
        """
        from megatron.core import parallel_state

        if self.valid_data is None:
            raise ValueError(
                "no validation data: evaluation needs --eval-interval and a --split with a validation share"
            )
        t = self.config.training
        wanted = self.config.validation_samples
        dp = parallel_state.get_data_parallel_world_size()
        # Interleaved 1F1B needs a multiple of the pipeline size in micro-batches per rank.
        per_rank = self.plan.layout.pipeline if self.plan.layout.virtual_pipeline else 1
        chunk = t.micro_batch_size * dp * per_rank
        total = -(-wanted // chunk) * chunk
        batches = self.micro_batches(self.valid_data, 0, total)
        first = parallel_state.get_data_parallel_rank() * (total // dp)
        for j, batch in enumerate(batches):
            for k in range(t.micro_batch_size):
                if first + j * t.micro_batch_size + k >= wanted:
                    batch["loss_mask"][k] = 0
        for model in self.model:
            model.eval()
        with torch.no_grad():
            metrics = self._forward_backward(batches, forward_only=True)
        for model in self.model:
            model.train()
        out = {"validation lm loss": metrics["lm loss"]}
        for modality in ("audio", "text"):
            if metrics[f"{modality} tokens"]:
                out[f"validation {modality} loss"] = metrics[f"{modality} loss"]
        return out

    # ---- checkpoints ----------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        from megatron_soda.models.shape_record import record_for
        from megatron_soda.training import checkpointing

        start = time.time()
        path = checkpointing.save_checkpoint(
            self.config.checkpoint.save,
            self.iteration,
            self.model,
            self.optimizer,
            {"schedule": self.plan.schedule.__dict__},
            self.consumed_samples,
            {
                "model": record_for(self.plan.shape),
                "vocab_size": self.plan.vocab.vocab_size,
                "padded_vocab_size": self.plan.shape.padded_vocab_size(),
            },
        )
        seconds = time.time() - start
        if _global_rank() != 0:
            return
        size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
        logger.info(
            "saved checkpoint at iteration %d to %s (%.2f GB, %.1f s)", self.iteration, path, size / 1e9, seconds
        )
        ckpt = self.config.checkpoint
        if ckpt.save_keep_latest and not self.stops.stopping:  # a stop's grace period is not for deleting
            deleted = checkpointing.prune_checkpoints(ckpt.save, ckpt.save_keep_latest, ckpt.save_keep_interval)
            if deleted:
                logger.info(
                    "deleted older checkpoints (--save-keep-latest %d): iterations %s",
                    ckpt.save_keep_latest,
                    ", ".join(map(str, deleted)),
                )

    # ---- the loop -------------------------------------------------------------------------------

    def train(self) -> Optional[str]:
        """Steps until --train-iters (or --exit-interval), logging, evaluating and saving as configured.

        Returns ``stop_reason``: why the run stopped early on request (``training/stopping.py``), after
        saving, or None when it ran its course.
        """
        from megatron_soda.training.data import Prefetcher
        from megatron_soda.training.flops import peak_bf16_flops, six_n_flops_per_token, training_flops_per_token

        plan, t = self.plan, self.config.training
        flops_per_token = training_flops_per_token(plan.shape, t.seq_length)
        six_n = six_n_flops_per_token(plan.shape)
        info = device_info()
        peak = peak_bf16_flops(info.name) if info.cuda else None
        names = _dataset_names(plan.prefixes)
        prefetch = Prefetcher(
            lambda first, pool: self.micro_batches(self.train_data, first, t.global_batch_size, pool),
            self.config.data.num_workers,
        )
        self.stops.install()  # a caller that skipped setup
        try:
            self._train_loop(prefetch, flops_per_token, six_n, peak, names)
        finally:
            prefetch.close()
        return self.stop_reason

    def _train_loop(self, prefetch, flops_per_token: float, six_n: float, peak: Optional[float], names) -> None:
        from megatron_soda.data.gpt_blend import samples_per_dataset
        from megatron_soda.training.flops import mfu

        plan, t, ckpt = self.plan, self.config.training, self.config.checkpoint
        interval = self.config.validation_interval
        while self.iteration < plan.train_iters:
            start = time.time()
            first = self.consumed_samples
            following = first + t.global_batch_size if self.iteration + 1 < plan.train_iters else None
            batches = prefetch.get(first, following)
            metrics = self.train_step(batches)
            self._mix_counts = self._mix_counts + samples_per_dataset(self.train_data, first, self.consumed_samples)
            rate = t.tokens_per_iteration / (time.time() - start)
            values = {
                "consumed samples": self.consumed_samples,
                "elapsed time per iteration (ms)": (time.time() - start) * 1000.0,
                "learning rate": metrics["learning rate"],
                "lm loss": metrics["lm loss"],
                # The loss tokens of the step: all but pads and piece ends, or the flagged ones when fine-tuning.
                "trained tokens": metrics["audio tokens"] + metrics["text tokens"],
                # Per modality only when the batch had such tokens: a 0 would read as a perfect loss.
                **{f"{m} loss": metrics[f"{m} loss"] for m in ("audio", "text") if metrics[f"{m} tokens"]},
                "z loss": metrics["z loss"],
                **({"grad norm": metrics["grad norm"]} if math.isfinite(metrics["grad norm"]) else {}),
                "tokens per second": rate,
                "TFLOP/s per device": flops_per_token * rate / plan.world_size / 1e12,
                "6N TFLOP/s per device": six_n * rate / plan.world_size / 1e12,
                "skipped iterations": self.skipped_iterations,
            }
            if len(self._mix_counts) > 1:
                total = float(self._mix_counts.sum())
                values["data mix"] = {name: round(float(c) / total, 4) for name, c in zip(names, self._mix_counts)}
            if peak is not None:
                values["MFU"] = mfu(rate / plan.world_size, plan.shape, t.seq_length, peak)
            console = self.iteration % self.config.logging.log_interval == 0 or self.iteration == plan.train_iters
            self.log.log(self.iteration, plan.train_iters, values, console=console, average=True)
            last = self.iteration == plan.train_iters
            # A stop on request leaves the grace period to the save: evaluations due now are skipped (and
            # asked again after each evaluation, which may be when the signal came).
            stop = None if last else self.stops.requested()
            if interval and (self.iteration % interval == 0 or last) and stop is None:
                self.log.log(self.iteration, plan.train_iters, self.evaluate(), console=True)
                stop = None if last else self.stops.requested()
            tasks_interval = self.config.eval.eval_tasks_interval
            due = last or (tasks_interval and self.iteration % tasks_interval == 0)
            if self.benchmarks is not None and due and stop is None:
                self.log.log(self.iteration, plan.train_iters, self.benchmarks.evaluate(self.model), console=True)
                stop = None if last else self.stops.requested()
            exiting = stop is not None or (t.exit_interval is not None and self.iteration % t.exit_interval == 0)
            if ckpt.save and (exiting or last or (ckpt.save_interval and self.iteration % ckpt.save_interval == 0)):
                self.save_checkpoint()
            if stop is not None:
                self.stop_reason = stop
                logger.warning(
                    "stopping at iteration %d of %d: %s; saved to %s, a relaunch with --load %s continues the run",
                    self.iteration,
                    plan.train_iters,
                    stop,
                    ckpt.save,
                    ckpt.save,
                )
                break
            if exiting:
                logger.info("exiting at iteration %d (--exit-interval %d)", self.iteration, t.exit_interval)
                break

    def close(self) -> None:
        from megatron_soda.training import parallel

        if self.log is not None:
            self.log.close()
        parallel.destroy()
        self.stops.restore()

    def _log_mix(self, achieved: List[float]) -> None:
        """The blend's requested and achieved shares of the training samples, once at the start."""
        prefixes, weights = self.plan.prefixes, self.plan.weights
        if len(prefixes) < 2:
            return
        total = sum(weights) if weights else None
        for k, prefix in enumerate(prefixes):
            asked = f"{weights[k] / total:.4f}" if weights else "by size"
            logger.info("data mix: %s asked %s, achieved %.4f of the training samples", prefix, asked, achieved[k])


def _one_or_list(funcs: List[Any]) -> Any:
    """megatron's schedules take one function for one model chunk, a list for virtual pipeline chunks."""
    return funcs[0] if len(funcs) == 1 else funcs


def _global_rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _dataset_names(prefixes: List[str]) -> List[str]:
    """Short unique names for a blend's datasets (their file names, or whole prefixes where those clash)."""
    short = [os.path.basename(p.rstrip("/")) or p for p in prefixes]
    return short if len(set(short)) == len(short) else list(prefixes)


def _from_last_stage(values: Dict[str, float]) -> Dict[str, float]:
    """Values only the last pipeline stage computed (the losses), on every rank, so all ranks decide alike."""
    from megatron.core import parallel_state

    last = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    tensor = torch.tensor(
        [float(v) if last else 0.0 for v in values.values()], dtype=torch.float64, device=device_info().current()
    )
    torch.distributed.all_reduce(tensor, group=parallel_state.get_pipeline_model_parallel_group())
    return dict(zip(values, tensor.tolist()))
