"""SODA pretraining on megatron-core.

    torchrun --nproc-per-node 8 -m megatron_soda.pretrain --model soda-600m \\
        --data-path 0.95 data/speech 0.05 data/text --tokenizer tokenizers/soda \\
        --tensor-model-parallel-size 1 --micro-batch-size 4 --bf16 --save ckpt --load ckpt

A SODA preset brings SODA's recipe (batch 512 x 4096, WSD schedule, Cautious AdamW with AdamC,
z-loss 1e-4); flags override it. Any other shape comes from Megatron-LM's flags (--num-layers,
--hidden-size, ...) and brings no recipe. --finetune starts from --load's weights alone. --dry-run
checks everything and prints the model, layout, run size and memory per GPU without touching data
or devices. Runs on CPU too (gloo), where tests drive real TP/PP with it. Under torchrun, or plain srun
(ranks and the master derived from SLURM's variables: ``launch_env``). A run stopped early on request
(--exit-signal-handler, --exit-duration-in-mins) saves and exits with code 75: relaunch it with --load.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

from megatron_soda import launch_env
from megatron_soda.logs import quiet_logs
from megatron_soda.training.config import TrainConfig
from megatron_soda.training.plan import RunPlan, describe, parse_train_config, plan_run
from megatron_soda.training.stopping import EXIT_RESUMABLE

logger = logging.getLogger("megatron_soda.pretrain")


def pretrain(config: TrainConfig) -> Optional[str]:
    """Trains the run ``config`` describes (library entry: checks, builds, trains, closes).

    Returns why it stopped early on request (a signal, --exit-duration-in-mins), or None.
    """
    return train(plan_run(config))


def train(plan: RunPlan) -> Optional[str]:
    """Builds and trains a checked run; returns ``Trainer.train``'s stop reason."""
    from megatron_soda.training.trainer import Trainer  # megatron-core: after every check

    if int(os.environ.get("RANK", 0)) == 0:
        for line in describe(plan):
            logger.info("%s", line)
    trainer = Trainer(plan)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.close()


def main(argv=None) -> int:
    config = parse_train_config(argv, prog="pretrain", description=__doc__.split("\n\n")[0])
    try:  # usage errors: everything plan_run refuses is the invocation's fault, named in one line
        if not config.dry_run:  # a plan for WORLD_SIZE ranks needs no launcher
            launch_env.apply()  # torchrun, srun or one process: before anything reads RANK or WORLD_SIZE
        quiet_logs(config.logging.verbose)
        plan = plan_run(config, check_data=not config.dry_run)
    except (ValueError, ImportError, FileNotFoundError) as error:
        print(f"pretrain: error: {error}", file=sys.stderr)
        return 2
    if config.dry_run:
        print("\n".join(describe(plan)))
        return 0
    stopped = train(plan)  # a failure from here on is not a usage error: it keeps its traceback
    if stopped:
        # Saved, logs closed: leave now. Interpreter shutdown resets signal handlers, and srun's SIGTERM to a
        # step's remaining tasks (sent once one has exited) would then turn this exit 75 into a kill (143).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_RESUMABLE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
