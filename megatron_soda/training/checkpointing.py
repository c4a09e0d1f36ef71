"""Training checkpoints: megatron-core dist checkpoints, published atomically, resumable bit for bit.

Layout of ``save_dir``::

    latest_checkpointed_iteration.txt   the iteration of the newest *complete* checkpoint ("42\\n")
    iter_0000042/                        one megatron-core dist checkpoint (torch_dist format)
    .iter_0000043.incomplete/            a save in progress, or one that was killed (removed by the next save)

What one ``iter_NNNNNNN`` directory holds, and where:

- **Model** (sharded): every chunk's ``sharded_state_dict()``, nested as ``{"model0": ..., "model1": ...}``
  so that one ``dist_checkpointing`` call covers all of a rank's chunks (it checks that the shards of
  each tensor are covered within one call). Tensor keys are global (``decoder.layers.5...``, TE-spec
  names, docs/design.md), so a checkpoint loads at any TP/PP/VP: dist checkpointing reshards.
- **Optimizer** (sharded): ``optimizer.sharded_state_dict(model_sharded_state_dict)`` of the megatron
  wrapper (``FP32Optimizer``, ``Float16Optimizer...``, ``DistributedOptimizer`` or a
  ``ChainedOptimizer`` of them). Moments are ShardedTensors keyed after their parameters, so they
  reshard like the model; the step count and param-group hyperparameters are common state.
- **Common state** (written once, by rank 0: ``common.pt`` in megatron-core 0.16, inside the torch_dist
  files from 0.17 on; ``dist_checkpointing.load_common_state_dict`` reads both) under the key ``"soda"``: format
  version, iteration, consumed_samples, scheduler_state, the parallel layout it was saved at, the
  optimizer's checkpoint format (``OPTIMIZER_METADATA``; None when saved without optimizer),
  ``model_only`` (weights alone as a starting point, e.g. imported: see ``save_checkpoint``), and
  ``extra`` (the caller's: e.g. args, padded vocabulary size, model shape). ``read_checkpoint_info``
  returns it without building a model, so a trainer can learn the padded vocabulary first.
- **RNG states** (per rank): python ``random``, numpy, torch CPU, and CUDA (device state and
  megatron's model-parallel RNG tracker) where CUDA exists, as one megatron ``ShardedObject``
  ``rng_state`` with one shard per global rank. They are restored only when the checkpoint's layout
  (world size, TP, PP, VP) equals the current one: global rank r then plays the same role in both
  runs. Under any other layout a rank has no counterpart, so they are skipped (logged on rank 0),
  as Megatron-LM does when TP/PP change.

Everything in the common state must be plain data (None, bool, int, float, str, tensors, lists,
tuples, dicts with string keys): megatron-core reads the common state with ``torch.load``, whose
default in torch >= 2.6 is ``weights_only=True``. ``save_checkpoint`` refuses anything else up front,
rather than writing a checkpoint that cannot be read back.

Publishing (why a killed save never looks complete):

1. rank 0 removes stale ``.iter_*.incomplete`` directories and creates this save's one;
2. every rank writes its shards there (``dist_checkpointing.save``, collective);
3. one rank per node fsyncs every file and directory in it (megatron fsyncs its shard files but not
   ``common.pt`` or ``metadata.json``); barrier;
4. rank 0 renames it to ``iter_NNNNNNN``, fsyncs ``save_dir``, then replaces the latest file
   atomically (write a temporary file, fsync, rename, fsync the directory); barrier.

A kill before step 4 leaves the previous checkpoint as latest and the partial one under a name that
neither ``latest_iteration`` nor a reader of ``iter_*`` directories takes for a checkpoint. Saving
an iteration that already exists (re-running from an older checkpoint) moves the old directory to
``.iter_NNNNNNN.replaced`` for the instant between two renames; ``load_checkpoint`` names it in its
error should a kill land exactly there.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist

from megatron_soda.data.jobs import fsync_path
from megatron_soda.device import device_info

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of what this module stores under the ``"soda"`` common key; bump on incompatible change."""
LATEST_FILE = "latest_checkpointed_iteration.txt"
"""Name of the pointer file (Megatron-LM's name, so its tools find our checkpoints' newest iteration)."""

OPTIMIZER_METADATA = {
    # The distributed optimizer's state in model space (one tensor per parameter, like a plain
    # optimizer's), so it reshards across TP, PP and DP; it is gathered on DP rank 0 at save.
    # megatron's default, "fully_sharded_model_space", is deprecated in 0.16 and builds
    # ShardedTensors with flattened_range, which 0.16's checkpointing refuses; "dp_reshardable"
    # (Megatron-LM's default) could only change DP. Ignored by the non-distributed wrappers.
    "distrib_optim_sharding_type": "fully_reshardable",
    # No "chained_i." prefix on a ChainedOptimizer's members: keys follow the parameters, unique already.
    "chained_optim_avoid_prefix": True,
}
"""``metadata`` for ``MegatronOptimizer.sharded_state_dict`` at save; stored in the checkpoint, whose
copy is what ``load_checkpoint`` uses, so checkpoints stay loadable if this changes."""

PathLike = Union[str, os.PathLike]


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model (other shape, other keys)."""


# ---- names and the latest pointer --------------------------------------------------------------


def checkpoint_dir(save_dir: PathLike, iteration: int) -> Path:
    """Where the checkpoint of ``iteration`` lives: ``save_dir/iter_0000042``."""
    return Path(save_dir) / f"iter_{iteration:07d}"


def _incomplete_dir(save_dir: Path, iteration: int) -> Path:
    return save_dir / f".iter_{iteration:07d}.incomplete"


def _replaced_dir(save_dir: Path, iteration: int) -> Path:
    return save_dir / f".iter_{iteration:07d}.replaced"


def _deleting_dir(save_dir: Path, iteration: int) -> Path:
    return save_dir / f".iter_{iteration:07d}.deleting"


def prune_checkpoints(save_dir: PathLike, keep_latest: int, keep_interval: Optional[int] = None) -> List[int]:
    """Deletes the checkpoints of ``save_dir`` but the ``keep_latest`` newest (the latest always among them)
    and those at multiples of ``keep_interval``; returns the iterations deleted. One rank calls it.

    Each goes first by an atomic rename to a hidden ``.deleting`` name, so one interrupted half-way is
    never mistaken for a checkpoint; leftovers of earlier interruptions are removed here too.
    """
    if keep_latest < 1:
        raise ValueError(f"keep_latest must be >= 1, got {keep_latest}")
    save_dir = Path(save_dir)
    latest = latest_iteration(save_dir)
    found = sorted(int(m.group(1)) for p in save_dir.glob("iter_*") if (m := re.fullmatch(r"iter_(\d{7})", p.name)))
    newest = set(found[-keep_latest:]) | ({latest} if latest is not None else set())
    doomed = [i for i in found if i not in newest and not (keep_interval and i % keep_interval == 0)]
    for iteration in doomed:
        os.rename(checkpoint_dir(save_dir, iteration), _deleting_dir(save_dir, iteration))
    for leftover in save_dir.glob(".iter_*.deleting"):
        shutil.rmtree(leftover)
    return doomed


def latest_iteration(load_dir: PathLike) -> Optional[int]:
    """The iteration in ``load_dir``'s latest file; None when the file does not exist.

    Raises ValueError (naming the file and its content) when the file holds anything but one
    non-negative integer.
    """
    path = Path(load_dir) / LATEST_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    if not re.fullmatch(r"\s*\d+\s*", text):
        raise ValueError(
            f"{path} should hold one iteration number, but holds {text[:80]!r}; fix or remove it, "
            f"or pass an explicit iteration to load"
        )
    return int(text)


def _write_latest(save_dir: Path, iteration: int) -> None:
    tmp = save_dir / f".{LATEST_FILE}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{iteration}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, save_dir / LATEST_FILE)
    fsync_path(save_dir)


def _fsync_tree(root: Path) -> None:
    """fsyncs every file, then every directory (deepest first), under ``root``."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_path(Path(dirpath))


def _resolve(load_dir: PathLike, iteration: Optional[int]) -> Path:
    """The checkpoint directory to load, or an error that says what is missing and what to do."""
    load_dir = Path(load_dir)
    if not load_dir.is_dir():
        raise FileNotFoundError(f"no checkpoint directory {load_dir}")
    if iteration is None:
        iteration = latest_iteration(load_dir)
        if iteration is None:
            found = sorted(p.name for p in load_dir.glob("iter_*") if re.fullmatch(r"iter_\d{7}", p.name))
            hint = (
                f"; it holds {', '.join(found)}: pass iteration= to load one of them"
                if found
                else "; no checkpoint was ever completed there"
            )
            raise FileNotFoundError(f"no checkpoint in {load_dir}: {LATEST_FILE} is missing{hint}")
    path = checkpoint_dir(load_dir, iteration)
    if not path.is_dir():
        replaced = _replaced_dir(load_dir, iteration)
        hint = (
            f"; a save was killed while replacing it: rename {replaced.name} to {path.name}"
            if replaced.is_dir()
            else ""
        )
        raise FileNotFoundError(f"no checkpoint of iteration {iteration} in {load_dir}: {path} does not exist{hint}")
    if not (path / "metadata.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete megatron-core dist checkpoint (no metadata.json)")
    return path


# ---- what is stored ----------------------------------------------------------------------------


def _check_plain(value: Any, where: str) -> None:
    """Refuses values that ``torch.load(weights_only=True)`` cannot read back (see module docstring)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-string key {key!r}; checkpoint state needs string keys")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a checkpoint cannot hold: store plain data "
        f"(None, bool, int, float, str, tensors, lists, dicts), e.g. dataclasses.asdict() of a config"
    )


def _layout() -> Dict[str, Optional[int]]:
    from megatron.core import parallel_state as ps

    return {
        "world_size": dist.get_world_size(),
        "tensor": ps.get_tensor_model_parallel_world_size(),
        "pipeline": ps.get_pipeline_model_parallel_world_size(),
        "virtual_pipeline": ps.get_virtual_pipeline_model_parallel_world_size(),
        "data": ps.get_data_parallel_world_size(),
    }


def _rng_state() -> Dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if device_info().cuda:
        from megatron.core import tensor_parallel

        state["cuda"] = torch.cuda.get_rng_state()
        state["cuda_tracker"] = tensor_parallel.get_cuda_rng_tracker().get_states()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device_info().cuda and "cuda" in state:
        from megatron.core import tensor_parallel

        torch.cuda.set_rng_state(state["cuda"])
        tensor_parallel.get_cuda_rng_tracker().set_states(state["cuda_tracker"])


def _rng_sharded_object(data):
    from megatron.core.dist_checkpointing import ShardedObject

    return ShardedObject("rng_state", data, (dist.get_world_size(),), (dist.get_rank(),), replica_id=0)


def _unwrap(model_chunks: Sequence[torch.nn.Module]) -> List[torch.nn.Module]:
    """The GPTModels inside DDP / Float16Module wrappers (whose own keys would gain ``module.``)."""
    from megatron.core.utils import unwrap_model

    return unwrap_model(list(model_chunks))


def _model_sharded_state_dict(models: Sequence[torch.nn.Module]) -> Dict[str, Any]:
    return {f"model{i}": model.sharded_state_dict(prefix="") for i, model in enumerate(models)}


# ---- save --------------------------------------------------------------------------------------


def save_checkpoint(
    save_dir: PathLike,
    iteration: int,
    model_chunks: Sequence[torch.nn.Module],
    optimizer,
    scheduler_state: dict,
    consumed_samples: int,
    extra: Optional[dict] = None,
    model_only: bool = False,
) -> Path:
    """Saves model, optimizer, RNG and training progress as ``save_dir/iter_{iteration:07d}``; collective.

    Every rank calls this with its own chunks (DDP-wrapped or not) and the megatron optimizer (or
    None to save weights only). ``scheduler_state`` and ``extra`` are plain data (checked here, see
    the module docstring), identical on every rank. The checkpoint becomes visible (directory
    renamed into place, then the latest file updated) only after every rank has written and synced
    its part. Returns the checkpoint directory.

    ``model_only`` saves weights as a starting point (e.g. imported from Hugging Face): no optimizer
    (``optimizer`` must be None) and no RNG state; ``load_checkpoint`` then starts a run's optimizer
    fresh and keeps the run's own RNG, where it refuses a checkpoint merely saved without optimizer.
    """
    from megatron.core import dist_checkpointing

    if model_only and optimizer is not None:
        raise ValueError("a model_only checkpoint holds no optimizer state: pass optimizer=None")
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    _check_plain(scheduler_state, "scheduler_state")
    _check_plain(extra, "extra")
    save_dir = Path(save_dir)
    final, tmp = checkpoint_dir(save_dir, iteration), _incomplete_dir(save_dir, iteration)
    rank = dist.get_rank()
    if rank == 0:
        save_dir.mkdir(parents=True, exist_ok=True)
        for stale in save_dir.glob(".iter_*.incomplete"):  # left by killed saves; never loadable
            shutil.rmtree(stale)
        tmp.mkdir()
    dist.barrier()

    models = _unwrap(model_chunks)
    state = _model_sharded_state_dict(models)
    if optimizer is not None:
        _init_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(dict(state), metadata=dict(OPTIMIZER_METADATA))
    if not model_only:
        state["rng_state"] = _rng_sharded_object(_rng_state())
    state["soda"] = {
        "format_version": FORMAT_VERSION,
        "iteration": int(iteration),
        "consumed_samples": int(consumed_samples),
        "scheduler_state": scheduler_state,
        "extra": extra,
        "layout": _layout(),
        "optimizer_metadata": dict(OPTIMIZER_METADATA) if optimizer is not None else None,
        "model_only": bool(model_only),
    }
    dist_checkpointing.save(state, str(tmp))

    if int(os.environ.get("LOCAL_RANK", rank)) == 0:  # one rank per node flushes what its node wrote
        _fsync_tree(tmp)
    dist.barrier()
    if rank == 0:
        _publish(save_dir, tmp, final, iteration)
    dist.barrier()
    return final


def _init_optimizer_state(optimizer) -> None:
    """Gives parameters without optimizer state (none has stepped yet) zero moments, as loading does.

    Otherwise a checkpoint saved before the first update holds no moments while the loading side
    (``sharded_state_dict(is_loading=True)`` runs the same ``init_state_fn``) asks for them. Zero
    moments without a step count are what ``CautiousAdamW`` (like torch's AdamW) starts from anyway.
    """
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        if sub.optimizer is not None and getattr(sub, "init_state_fn", None) is not None:
            sub.init_state_fn(sub.optimizer, sub.config)


def _publish(save_dir: Path, tmp: Path, final: Path, iteration: int) -> None:
    replaced = None
    if final.exists():
        replaced = _replaced_dir(save_dir, iteration)
        if replaced.exists():
            shutil.rmtree(replaced)
        os.rename(final, replaced)
    os.rename(tmp, final)
    fsync_path(save_dir)
    _write_latest(save_dir, iteration)
    if replaced is not None:
        shutil.rmtree(replaced)


# ---- load --------------------------------------------------------------------------------------


def read_checkpoint_info(load_dir: PathLike, iteration: Optional[int] = None) -> Dict[str, Any]:
    """The common state of a checkpoint (no model needed, no process group needed).

    Keys: iteration, consumed_samples, scheduler_state, extra, layout (the parallel layout it was
    saved at), optimizer_metadata (None when saved without optimizer), model_only (see
    ``save_checkpoint``), format_version, and path.
    """
    from megatron.core import dist_checkpointing

    path = _resolve(load_dir, iteration)
    common = dist_checkpointing.load_common_state_dict(str(path))
    info = common.get("soda")
    if info is None:
        raise ValueError(
            f"{path} is a megatron-core dist checkpoint but not one written by megatron_soda "
            f"(no 'soda' entry in its common state)"
        )
    if info["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format {info['format_version']}; this code reads up to "
            f"{FORMAT_VERSION}: update megatron_soda"
        )
    return {"model_only": False, **info, "path": path}  # checkpoints from before model_only existed


def load_checkpoint(
    load_dir: PathLike,
    model_chunks: Sequence[torch.nn.Module],
    optimizer,
    iteration: Optional[int] = None,
    load_optimizer: bool = True,
    load_rng: bool = True,
) -> Dict[str, Any]:
    """Restores model chunks, optimizer and RNG from ``load_dir`` (the latest, or ``iteration``); collective.

    The current TP/PP/VP may differ from the saved one: model and optimizer state are resharded
    (RNG states are restored only under the same layout; see the module docstring). Build the
    optimizer before loading, as for training. Param-group hyperparameters (lr, weight decay, ...)
    come back from the checkpoint, as torch's ``load_state_dict`` does: set the learning rate before
    every update (``schedules.apply_lr``) rather than once at start. Returns the checkpoint's iteration,
    consumed_samples, scheduler_state and extra, plus ``rng_restored``.

    A ``model_only`` checkpoint (``save_checkpoint``) loads the model alone: the optimizer keeps its
    fresh state (its main copies of the parameters are reloaded from the model) and the RNGs their
    current one.

    Raises FileNotFoundError when there is no checkpoint to load (naming the directory and the
    missing piece) and ``CheckpointMismatchError`` when the checkpoint's tensors do not fit the
    model (megatron's message, with the offending keys).
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from torch.distributed.checkpoint.api import CheckpointException

    info = read_checkpoint_info(load_dir, iteration)
    path = info["path"]
    load_optimizer = load_optimizer and optimizer is not None and not info["model_only"]
    if load_optimizer and info["optimizer_metadata"] is None:
        raise ValueError(
            f"{path} holds no optimizer state (saved with optimizer=None); load it with load_optimizer=False"
        )
    load_rng = load_rng and not info["model_only"]
    rng_restored = load_rng and info["layout"] == _layout()
    if load_rng and not rng_restored and dist.get_rank() == 0:
        logger.warning(
            "checkpoint %s was saved at layout %s, this run is %s: RNG states not restored",
            path,
            info["layout"],
            _layout(),
        )

    models = _unwrap(model_chunks)
    state = _model_sharded_state_dict(models)
    if load_optimizer:
        state["optimizer"] = optimizer.sharded_state_dict(
            dict(state), is_loading=True, metadata=dict(info["optimizer_metadata"])
        )
    if rng_restored:
        state["rng_state"] = _rng_sharded_object(None)

    try:
        loaded, missing, unexpected = dist_checkpointing.load(state, str(path), strict="return_all")
    except (CheckpointingException, CheckpointException) as error:
        raise CheckpointMismatchError(f"checkpoint {path} does not fit this model: {_reason(error)}") from error
    _raise_on_mismatch(path, missing, unexpected, load_optimizer)

    for i, model in enumerate(models):
        model.load_state_dict(loaded[f"model{i}"])
    if load_optimizer:
        optimizer.load_state_dict(loaded["optimizer"])
    elif optimizer is not None:
        # Mixed-precision optimizers keep fp32 main copies of the parameters, made when they were
        # built; without this the first step would write those (the initial weights) back.
        optimizer.reload_model_params()
    if rng_restored:
        _set_rng_state(loaded["rng_state"])
    return {
        "iteration": info["iteration"],
        "consumed_samples": info["consumed_samples"],
        "scheduler_state": info["scheduler_state"],
        "extra": info["extra"],
        "rng_restored": rng_restored,
        "optimizer_restored": load_optimizer,
    }


def _reason(error: BaseException) -> str:
    """megatron's message; torch's ``CheckpointException`` (every rank's traceback) reduced to its distinct causes."""
    failures = getattr(error, "failures", None)
    if not failures:
        return str(error)
    return "; ".join(dict.fromkeys(str(exc) for exc, _ in failures.values()))


def _raise_on_mismatch(path: Path, missing, unexpected, load_optimizer: bool) -> None:
    """Raises on every rank alike when the checkpoint and the model hold different tensors.

    megatron's "unexpected" keys are ones this rank asked for that the checkpoint lacks (they differ
    per rank, hence the exchange); "missing" keys are in the checkpoint but asked for by no rank:
    harmless for state we chose not to load, a sign of another model otherwise.
    """
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, sorted(unexpected))
    lacking = sorted(set().union(*gathered))
    skipped = ("rng_state",) + (() if load_optimizer else ("optimizer.",))
    extra = sorted(k for k in missing if not k.startswith(skipped))
    if not lacking and not extra:
        return
    parts = []
    if lacking:
        parts.append(
            f"{len(lacking)} tensors of the model are not in the checkpoint: {', '.join(lacking[:8])}"
            + (" ..." if len(lacking) > 8 else "")
        )
    if extra:
        parts.append(
            f"{len(extra)} tensors of the checkpoint are not in the model: {', '.join(extra[:8])}"
            + (" ..." if len(extra) > 8 else "")
        )
    raise CheckpointMismatchError(
        f"checkpoint {path} does not fit this model ({'; '.join(parts)}); was it "
        f"saved from another model shape? read_checkpoint_info() shows its 'extra'"
    )
