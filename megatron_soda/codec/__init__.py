"""Neural audio codecs (waveform <-> codes) and audio input.

``audio_io`` needs neither torch nor transformers, so the codec names below are imported on first use:
``from megatron_soda.codec.audio_io import load_audio`` (data validation) never loads torch.
"""

import importlib

from megatron_soda.codec.audio_io import AudioRejected, check_waveform, load_audio, resample

_LAZY = {
    "AudioCodec": "megatron_soda.codec.base",
    "CodecConfig": "megatron_soda.codec.config",
    "EncodecCodec": "megatron_soda.codec.encodec",
    "MimiCodec": "megatron_soda.codec.mimi",
    "load_codec": "megatron_soda.codec.loading",
}

__all__ = ["AudioRejected", "check_waveform", "load_audio", "resample", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
