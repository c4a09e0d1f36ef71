"""A world of one process for megatron-core's checkpoint I/O, which needs a process group even alone.

gloo over an in-memory store: no port, no launcher, nothing that a second conversion on the same
machine could collide with. Conversions run as one process (dist checkpoints reshard on load), so an
existing process group is accepted only if it is a world of one.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def one_process_group(megatron_parallel: bool = False, purpose: str = "checkpoint conversion"):
    """Process group (and, with ``megatron_parallel``, megatron-core's TP=1/PP=1 state) for the block.

    megatron's parallel state is what ``checkpointing.save_checkpoint`` and model building need; it
    also installs ``cpu_compat`` on machines without CUDA (``parallel.initialize``).
    """
    import torch.distributed as dist

    from megatron_soda.training import parallel

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    elif dist.get_world_size() != 1:
        raise RuntimeError(
            f"{purpose} runs as one process, but this is rank {dist.get_rank()} of "
            f"{dist.get_world_size()}: run it without torchrun"
        )
    try:
        if megatron_parallel:
            parallel.initialize(parallel.ParallelLayout())
        yield
    finally:
        if megatron_parallel:
            from megatron.core import parallel_state

            parallel_state.destroy_model_parallel()
        if owned:
            dist.destroy_process_group()
