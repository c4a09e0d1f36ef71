"""Rank 1 arrives late at a barrier; rank 0 waits at most --distributed-timeout-minutes (argv[1])."""

import os
import sys
import time

from megatron_soda.training import parallel

if __name__ == "__main__":
    parallel.initialize(parallel.ParallelLayout(), timeout_minutes=float(sys.argv[1]))
    if int(os.environ["RANK"]) == 1:
        time.sleep(float(sys.argv[2]))
    start = time.time()
    try:
        import torch.distributed as dist

        dist.barrier()
    except Exception as error:  # noqa: BLE001 (the test reads what the timeout says)
        print(f"failed after {time.time() - start:.1f} s: {error}", flush=True)
        os._exit(3)  # gloo's teardown would wait for the late rank
    print(f"passed the barrier after {time.time() - start:.1f} s", flush=True)
