"""Build a codec from a ``CodecConfig``: pretrained weights from a local directory or hub id, or random
weights for tests and offline smoke runs (loudly flagged: their tokens mean nothing)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from megatron_soda.codec import encodec, mimi
from megatron_soda.codec.base import AudioCodec
from megatron_soda.codec.config import CodecConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Backend:
    codec_class: type
    model_class_name: str
    """transformers class that loads the weights."""
    randomize_codebooks: Callable
    option: str
    """The CodecConfig field that sets its codebooks per frame."""
    example_path: str


_BACKENDS = {
    "mimi": _Backend(mimi.MimiCodec, "MimiModel", mimi.randomize_codebooks, "num_codebooks", "kyutai/mimi"),
    "encodec": _Backend(
        encodec.EncodecCodec, "EncodecModel", encodec.randomize_codebooks, "bandwidth", "facebook/encodec_24khz"
    ),
}


def load_codec(config: CodecConfig) -> AudioCodec:
    """The codec ``config`` describes, on its device, ready to encode."""
    if config.name not in _BACKENDS:
        raise ValueError(f"unknown codec {config.name!r}; choose one of {', '.join(_BACKENDS)}")
    backend = _BACKENDS[config.name]
    for other in {"num_codebooks", "bandwidth"} - {backend.option}:
        if getattr(config, other) is not None:
            raise ValueError(f"{other} does not apply to {config.name}; it sets its codebooks with {backend.option}")
    if config.path and config.random_init:
        raise ValueError("pass either --codec-path or --codec-random-init, not both")
    if config.encoder != "auto" and config.name != "mimi":
        raise ValueError(f"encoder={config.encoder!r} applies to mimi only, not {config.name}")
    if not config.path and not config.random_init:
        raise ValueError(
            f"no weights for the {config.name} codec: pass --codec-path (a local directory or hub id, e.g. "
            f"{backend.example_path}) or --codec-random-init (meaningless tokens, for tests)"
        )
    if config.config_overrides and not config.random_init:
        raise ValueError("config_overrides apply to random-init codecs only; a pretrained codec keeps its config")

    import transformers  # heavy: imported only when a codec is built

    model_class = getattr(transformers, backend.model_class_name)
    if config.random_init:
        unknown = sorted(set(config.config_overrides) - set(model_class.config_class().to_dict()))
        if unknown:
            raise ValueError(f"config_overrides {unknown} are not fields of {model_class.config_class.__name__}")
        torch.manual_seed(config.seed)
        model = model_class(model_class.config_class(**config.config_overrides))
        with torch.no_grad():
            backend.randomize_codebooks(model, torch.Generator().manual_seed(config.seed))
        logger.warning(
            "RANDOM-INIT %s codec (seed %d): its tokens are MEANINGLESS noise; use it for tests and smoke runs "
            "only, never for training data. Pass --codec-path for real tokens.",
            config.name,
            config.seed,
        )
    else:
        try:
            model = model_class.from_pretrained(config.path)
        except OSError as err:
            raise OSError(
                f"cannot load the {config.name} codec from --codec-path {config.path!r}: it must be a local "
                f"directory (config.json and weights) or a hub id reachable from here. {err}"
            ) from err
    option = getattr(config, backend.option)
    return backend.codec_class(
        model,
        **({} if option is None else {backend.option: option}),
        **({"encoder": config.encoder} if config.name == "mimi" else {}),
        device=config.device,
        dtype=config.dtype,
        max_batch_seconds=config.max_batch_seconds,
        random_init=config.random_init,
    )
