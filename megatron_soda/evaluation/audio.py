"""Evaluation audio -> codec codes, cached per codec so that evaluating another checkpoint does not encode
the benchmark again (sBLIMP alone is ~126k clips; the codec costs more than the tiny models' scoring).

Codes live at ``cache_dir/<identity hash>/<clip key>.npy``: the identity is everything that changes the
codes (codec, weights or random-init seed and overrides, codebooks, dtype, device type), the key a hash of
the clip's samples and rate. Each file is written to a temporary name and renamed, so a killed run leaves
no half-written codes, and two runs sharing a cache at worst encode a clip twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_soda.codec.audio_io import resample

IDENTITY_FILE = "identity.json"
"""Beside the codes: the identity they were made with, for a person looking at the cache."""
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")


def codec_identity(codec_config, codec) -> dict:
    """What makes ``codec``'s codes what they are, as JSON-able values (the report records it too).

    Pretrained weights are named by their path: a local directory also by its files' names, sizes and
    modification times, so replaced weights get a fresh cache; a hub id is taken as fixed."""
    identity = {
        "version": 1,
        "codec": codec_config.name,
        "sample_rate": int(codec.sample_rate),
        "num_codebooks": int(codec.num_codebooks),
        "codebook_size": int(codec.codebook_size),
        "bandwidth": codec_config.bandwidth,
        "dtype": str(codec.dtype).replace("torch.", ""),
        "device": getattr(codec.device, "type", str(codec.device)),
    }
    if codec_config.random_init:
        identity.update(random_init=True, seed=codec_config.seed, config_overrides=dict(codec_config.config_overrides))
    else:
        identity["weights"] = _weights_identity(codec_config.path)
    return identity


def _weights_identity(path: str) -> dict:
    if not os.path.isdir(path):
        return {"hub_id": path}
    files = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            stat = os.stat(full)
            files[name] = [stat.st_size, stat.st_mtime_ns]
    return {"path": os.path.abspath(path), "files": files}


def identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def clip_key(wave: np.ndarray, sample_rate: int) -> str:
    """A content hash of a clip (its float32 samples and rate): the same audio in any file or row shares codes."""
    digest = hashlib.sha256(f"{int(sample_rate)}:".encode())
    digest.update(np.ascontiguousarray(wave, dtype=np.float32).tobytes())
    return digest.hexdigest()[:32]


class AudioEncoder:
    """``encode([(key, wave, sample_rate), ...])`` -> codes ``[K, T]`` each, from the cache or the codec."""

    def __init__(self, codec, identity: dict, cache_dir: Optional[str] = None, chunk_clips: int = 256):
        self.codec = codec
        self.identity = dict(identity)
        self.chunk_clips = chunk_clips
        """clips resampled and handed to the codec at a time (the codec batches them by its own budget)."""
        self.directory = None if cache_dir is None else os.path.join(cache_dir, identity_hash(self.identity))
        self._memory: Dict[str, np.ndarray] = {}
        self.encoded = 0
        """clips that went through the codec."""
        self.loaded = 0
        """clips whose codes came from the disk cache."""
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)
            self._write(IDENTITY_FILE, json.dumps(self.identity, indent=2, sort_keys=True).encode())

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def num_codebooks(self) -> int:
        return self.codec.num_codebooks

    def encode(self, clips: Sequence[Tuple[str, np.ndarray, int]]) -> List[np.ndarray]:
        """Codes of each clip, in order; a key seen before (in this process or in the cache) is not encoded."""
        out: List[Optional[np.ndarray]] = [None] * len(clips)
        pending: Dict[str, List[int]] = {}
        for index, (key, _, _) in enumerate(clips):
            key = _file_key(key)
            codes = self._lookup(key)
            if codes is None:
                pending.setdefault(key, []).append(index)
            else:
                out[index] = codes
        keys = list(pending)
        for start in range(0, len(keys), self.chunk_clips):
            chunk = keys[start : start + self.chunk_clips]
            waves = []
            for key in chunk:
                _, wave, rate = clips[pending[key][0]]
                waves.append(resample(np.asarray(wave, dtype=np.float32), int(rate), self.codec.sample_rate))
            for key, codes in zip(chunk, self.codec.encode(waves)):
                self.encoded += 1
                self._store(key, codes)
                for index in pending[key]:
                    out[index] = codes
        return out

    def _lookup(self, key: str) -> Optional[np.ndarray]:
        if key in self._memory:
            return self._memory[key]
        if self.directory is None:
            return None
        path = os.path.join(self.directory, f"{key}.npy")
        try:
            codes = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable (foreign or damaged): encoded again and replaced
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks or not np.issubdtype(codes.dtype, np.integer):
            return None
        self.loaded += 1
        self._memory[key] = codes
        return codes

    def _store(self, key: str, codes: np.ndarray) -> None:
        self._memory[key] = codes
        if self.directory is not None:
            self._write(f"{key}.npy", _npy_bytes(codes))

    def _write(self, name: str, data: bytes) -> None:
        path = os.path.join(self.directory, name)
        temporary = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(temporary, "wb") as f:
                f.write(data)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _file_key(key: str) -> str:
    """``key`` itself when it is a safe file name, else its hash."""
    key = str(key)
    return key if _SAFE_KEY.match(key) else hashlib.sha256(key.encode()).hexdigest()[:32]
