"""How every entry point logs: its own lines on rank 0, megatron-core's notices only when asked for."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_logs(verbose: bool) -> None:
    """The run's own lines on rank 0; megatron-core's config dumps and known import notices only with --verbose."""
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if verbose or rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    if verbose:
        return
    logging.getLogger("megatron").setLevel(logging.WARNING)
    hide_known_notices()
    if rank != 0:
        warnings.simplefilter("ignore")  # the same warnings would come once per rank


KNOWN_NOTICES = (
    ".*Transformer Engine and Apex are not installed.*",
    ".*Apex is not installed.*",
    ".*tp_group is None, using default tp group.*",
    ".*flex_attention called without torch.compile.*",
    ".*full scope is deprecated.*",
    ".*`load_state_dict` is deprecated.*",
    ".*deprecating ShardedTensor.*",
)
"""Warnings megatron-core and torch print on every run here that say nothing about the run."""


def hide_known_notices() -> None:
    for notice in KNOWN_NOTICES:
        warnings.filterwarnings("ignore", message=notice)
