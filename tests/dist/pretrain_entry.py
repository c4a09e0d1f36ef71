"""`python -m megatron_soda.pretrain`, as tests.dist.launch runs scripts from this folder."""

import sys

from megatron_soda.pretrain import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
