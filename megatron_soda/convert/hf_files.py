"""Hugging Face model files: safetensors read by name across shards, written in size-capped shards, into
a directory that appears under its name only once complete.

Shards follow transformers' naming: one file is ``model.safetensors``; more are
``model-00001-of-0000N.safetensors`` with ``model.safetensors.index.json`` (``weight_map`` and
``metadata.total_size``), which ``from_pretrained`` reads either way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import torch

from megatron_soda.convert.names import ConversionError
from megatron_soda.data.jobs import fsync_path

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str) -> int:
    """``"5GB"`` (decimal units, as transformers' ``max_shard_size``), ``"2GiB"``, or a byte count."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", str(text).upper())
    if not match or float(match.group(1)) <= 0:
        raise ConversionError(f"--max-shard-size {text!r}: give a size such as 5GB, 500MB, 2GiB or a byte count")
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def tensor_bytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    count = 1
    for size in shape:
        count *= size
    return count * torch.empty((), dtype=dtype).element_size()


class HFTensors:
    """A Hugging Face directory's tensors by name: headers read up front, data on demand."""

    def __init__(self, directory):
        from safetensors import safe_open

        self.directory = Path(directory)
        index = self.directory / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ConversionError(f"{index} has no weight_map")
            files = sorted(set(weight_map.values()))
        elif (self.directory / SINGLE_FILE).is_file():
            weight_map, files = None, [SINGLE_FILE]
        else:
            raise ConversionError(
                f"{self.directory} holds neither {SINGLE_FILE} nor {INDEX_FILE} "
                f"(only safetensors weights convert; re-save others with save_pretrained)"
            )
        self._handles = {}
        self.files: Dict[str, str] = {}
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        self.dtypes: Dict[str, str] = {}
        """safetensors' dtype names: F32, BF16, F16, ..."""
        for file in files:
            path = self.directory / file
            if not path.is_file():
                raise ConversionError(f"{index} names {file}, which does not exist")
            handle = safe_open(str(path), framework="pt")
            self._handles[file] = handle
            for name in handle.keys():
                if weight_map is not None and weight_map.get(name) != file:
                    raise ConversionError(f"{path} holds {name}, which {index} places in {weight_map.get(name)}")
                self.files[name] = file
                header = handle.get_slice(name)
                self.shapes[name] = tuple(header.get_shape())
                self.dtypes[name] = header.get_dtype()
        if weight_map is not None:
            absent = sorted(set(weight_map) - set(self.files))
            if absent:
                raise ConversionError(f"{index} lists {', '.join(absent[:5])} but no shard holds them")

    def get(self, name: str) -> torch.Tensor:
        return self._handles[self.files[name]].get_tensor(name)

    def path(self, name: str) -> Path:
        return self.directory / self.files[name]


def plan_shards(sizes: Sequence[Tuple[str, int]], max_bytes: int) -> List[List[str]]:
    """Tensors in order, grouped into shards of at most ``max_bytes`` (a bigger tensor gets a shard alone)."""
    shards, current, used = [], [], 0
    for name, size in sizes:
        if current and used + size > max_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current:
        shards.append(current)
    return shards


def shard_file_names(count: int) -> List[str]:
    return [SINGLE_FILE] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


class ShardWriter:
    """Writes tensors, given in the planned order, shard by shard (one shard in memory at a time)."""

    def __init__(self, directory: Path, shards: List[List[str]]):
        self.directory = directory
        self.shards = shards
        self.files = shard_file_names(len(shards))
        self.pending: Dict[str, torch.Tensor] = {}
        self.weight_map: Dict[str, str] = {}
        self.total_size = 0
        self._next = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        from safetensors.torch import save_file

        expected = self.shards[self._next]
        if name not in expected or name in self.pending:
            raise RuntimeError(
                f"tensor {name} written out of the planned order (shard {self._next + 1} holds {expected})"
            )
        self.pending[name] = tensor.contiguous()
        if len(self.pending) == len(expected):
            file = self.files[self._next]
            save_file(self.pending, str(self.directory / file), metadata={"format": "pt"})
            for key, value in self.pending.items():
                self.weight_map[key] = file
                self.total_size += value.numel() * value.element_size()
            self.pending = {}
            self._next += 1

    def finish(self) -> None:
        if self._next != len(self.shards):
            raise RuntimeError(f"only {self._next} of {len(self.shards)} shards were written")
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}
            (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


@contextmanager
def staged_directory(output, overwrite: bool) -> Iterator[Path]:
    """A scratch directory beside ``output``, renamed to ``output`` only when the block completes.

    A failure removes it; a kill leaves ``.NAME.incomplete``, which no reader takes for a model and the
    next run removes. With ``overwrite``, an existing ``output`` is replaced whole (moved aside, the new
    one renamed in, the old one deleted).
    """
    output = Path(output)
    check_output(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = output.parent / f".{output.name}.incomplete"
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    try:
        yield scratch
        mode = 0o666 & ~_umask()  # what open() gives; safetensors writes its files 0600
        for entry in scratch.iterdir():
            if entry.is_file():
                entry.chmod(mode)
            fsync_path(entry)
        fsync_path(scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    old = None
    if output.exists():
        old = output.parent / f".{output.name}.replaced"
        if old.exists():
            shutil.rmtree(old)
        os.rename(output, old)
    os.rename(scratch, output)
    fsync_path(output.parent)
    if old is not None:
        shutil.rmtree(old)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(output: Path, overwrite: bool) -> None:
    """Refuses to write over an existing path unless asked, and over anything but a directory."""
    if output.exists() and not overwrite:
        raise ConversionError(f"{output} exists; pass --overwrite to replace it")
    if output.exists() and not output.is_dir():
        raise ConversionError(f"{output} exists and is not a directory")
