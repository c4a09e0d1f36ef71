"""The ``--codec*`` command-line flags, shared by every tool that loads a codec.

The flags are ``CodecConfig``'s fields (``megatron_soda.flags`` makes them: nest a ``CodecConfig``
field in a tool's config dataclass); ``check_codec`` refuses impossible combinations, naming the
flags, before torch or any weights are loaded. Torch-free.
"""

from __future__ import annotations

from megatron_soda.checks import check_at_least
from megatron_soda.codec.config import CodecConfig

__all__ = ["CodecConfig", "check_codec"]

_CODEBOOK_FLAG = {"mimi": "--num-codebooks", "encodec": "--bandwidth"}
_DEVICES = ("auto", "cpu", "cuda", "mps", "xpu")
_EXAMPLE_PATH = {"mimi": "kyutai/mimi", "encodec": "facebook/encodec_24khz"}


def check_codec(config: CodecConfig) -> None:
    """ValueError naming the flag for settings ``load_codec`` would refuse (or that cannot work); reads nothing."""
    if config.name not in _CODEBOOK_FLAG:
        raise ValueError(f"--codec {config.name}: choose one of {', '.join(_CODEBOOK_FLAG)}")
    for name, other in (("num_codebooks", "--num-codebooks"), ("bandwidth", "--bandwidth")):
        if getattr(config, name) is not None and other != _CODEBOOK_FLAG[config.name]:
            raise ValueError(
                f"{other} does not apply to --codec {config.name}; it sets its codebooks with "
                f"{_CODEBOOK_FLAG[config.name]}"
            )
    if config.path and config.random_init:
        raise ValueError("pass either --codec-path or --codec-random-init, not both")
    if not config.path and not config.random_init:
        raise ValueError(
            f"no weights for the {config.name} codec: pass --codec-path (a local directory or hub id, "
            f"e.g. {_EXAMPLE_PATH[config.name]}) or --codec-random-init (meaningless tokens, for tests)"
        )
    if config.config_overrides and not config.random_init:
        raise ValueError(
            "--codec-config applies to random-init codecs only (--codec-random-init); a pretrained "
            "codec keeps its config"
        )
    if config.encoder != "auto" and config.name != "mimi":
        raise ValueError(f"--codec-encoder applies to --codec mimi only, not {config.name}")
    check_at_least("--num-codebooks", config.num_codebooks, 1)
    if config.bandwidth is not None and config.bandwidth <= 0:
        raise ValueError(f"--bandwidth must be > 0 kbps, got {config.bandwidth}")
    if config.max_batch_seconds is not None and config.max_batch_seconds <= 0:
        raise ValueError(f"--codec-batch-seconds must be > 0, got {config.max_batch_seconds}")
    kind, _, index = config.device.partition(":")
    if kind not in _DEVICES or (index and (kind == "auto" or not index.isdigit())):
        raise ValueError(f"--device {config.device}: give auto, cpu, cuda or cuda:N")
