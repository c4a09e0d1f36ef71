"""Process groups and model chunks: tensor, pipeline (optionally interleaved) and data parallelism.

Launched by torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK in the environment), by
plain srun (the same derived from SLURM's variables: ``launch_env``), or as a plain single process.
NCCL where CUDA exists, gloo otherwise (with ``cpu_compat`` installed), so tests run real TP/PP.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist

from megatron_soda.device import device_info
from megatron_soda.training import cpu_compat


@dataclass(frozen=True)
class ParallelLayout:
    """How the world is split; data parallel takes what tensor x pipeline leaves."""

    tensor: int = 1
    """--tensor-model-parallel-size"""
    pipeline: int = 1
    """--pipeline-model-parallel-size"""
    virtual_pipeline: Optional[int] = None
    """Model chunks per pipeline rank for the interleaved schedule (from --num-layers-per-virtual-pipeline-stage)."""

    def check(self, world_size: int, num_layers: int, num_attention_heads: int, num_query_groups: int) -> None:
        """Refuses a layout that cannot work, naming the flag, before any work starts."""
        if self.tensor < 1 or self.pipeline < 1:
            raise ValueError("--tensor-model-parallel-size and --pipeline-model-parallel-size must be >= 1")
        if world_size % (self.tensor * self.pipeline):
            raise ValueError(
                f"world size {world_size} is not divisible by --tensor-model-parallel-size {self.tensor} "
                f"x --pipeline-model-parallel-size {self.pipeline}"
            )
        if num_attention_heads % self.tensor or num_query_groups % self.tensor:
            raise ValueError(
                f"--tensor-model-parallel-size {self.tensor} must divide the {num_attention_heads} attention "
                f"heads and the {num_query_groups} query groups"
            )
        chunks = self.pipeline * (self.virtual_pipeline or 1)
        if num_layers % chunks:
            raise ValueError(
                f"{num_layers} layers do not split into {self.pipeline} pipeline stages"
                + (f" x {self.virtual_pipeline} virtual stages" if self.virtual_pipeline else "")
            )


def check_runs_here(layout: ParallelLayout) -> None:
    """Refuses a layout this machine cannot run correctly (before any process group exists)."""
    if cpu_compat.needed() and layout.virtual_pipeline and layout.pipeline == 2:
        # Measured: at PP=2 both pipeline neighbours are one rank, and gloo matches that pair's
        # untagged messages in posting order, so an activation and a gradient of one shape can swap
        # silently once backward starts (forward-only is exact). PP >= 4 is exact.
        raise ValueError(
            "interleaved pipelining (--num-layers-per-virtual-pipeline-stage) with "
            "--pipeline-model-parallel-size 2 gives wrong gradients on gloo (CPU); use 4 or more stages"
        )


def initialize(layout: ParallelLayout, seed: int = 1234, timeout_minutes: float = 10) -> None:
    """Starts torch.distributed (if needed) and megatron-core's model-parallel groups; seeds every RNG.

    ``timeout_minutes`` (--distributed-timeout-minutes) bounds every collective of the world and of the
    model-parallel groups: a rank that waits longer for the others fails, naming the timeout, instead of
    hanging the job. Raise it where ranks legitimately wait long (rank 0 building a large blend's index).
    """
    from megatron.core import parallel_state, tensor_parallel

    from megatron_soda import launch_env

    check_runs_here(layout)
    cpu_compat.install()
    if not dist.is_initialized():
        launch_env.apply()  # plain srun sets SLURM's variables only
        backend = device_info().distributed_backend
        if device_info().cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if "RANK" in os.environ:
            dist.init_process_group(backend, timeout=timeout)
        else:  # plain `python`, no launcher: a world of one over an in-memory store (no port to pick)
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    if not _initialized_as(layout):  # a second run in one process (a benchmark) keeps the same groups
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=layout.tensor,
            pipeline_model_parallel_size=layout.pipeline,
            virtual_pipeline_model_parallel_size=layout.virtual_pipeline,
            distributed_timeout_minutes=timeout_minutes,
        )
    torch.manual_seed(seed)
    if device_info().cuda:
        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def _initialized_as(layout: ParallelLayout) -> bool:
    from megatron.core import parallel_state

    return (
        parallel_state.model_parallel_is_initialized()
        and parallel_state.get_tensor_model_parallel_world_size() == layout.tensor
        and parallel_state.get_pipeline_model_parallel_world_size() == layout.pipeline
        and parallel_state.get_virtual_pipeline_model_parallel_world_size() == layout.virtual_pipeline
    )


def destroy() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def build_model_chunks(
    shape, config, attention_backend: str = "auto", init_seed: Optional[int] = None
) -> List[torch.nn.Module]:
    """This rank's model: one chunk, or one per virtual stage for the interleaved schedule. ``init_seed``
    seeds each layer by its global number: the same fresh model at every pipeline layout."""
    from megatron.core import parallel_state

    from megatron_soda.models.gpt import build_gpt_model

    chunks = config.virtual_pipeline_model_parallel_size or 1
    models = []
    for vp_stage in range(chunks):
        vp = vp_stage if chunks > 1 else None
        models.append(
            build_gpt_model(
                shape,
                config,
                attention_backend=attention_backend,
                pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp),
                post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp),
                vp_stage=vp,
                init_seed=init_seed,
            )
        )
    return models
