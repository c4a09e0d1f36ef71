"""Which model a checkpoint holds: the ``model`` entry of its ``extra`` common state, and back.

Training stores a preset name there (``pretrain --model``). A model imported from Hugging Face whose
shape is no preset's stores its ``ModelShape`` fields as a plain dict instead (``dataclasses.asdict``,
which the checkpoint's common state can hold). Either form rebuilds the shape here.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from megatron_soda.models.presets import PRESETS, ModelShape, RopeScaling, get_preset
from megatron_soda.tokenizer.layout import SODA_LAYOUT

Record = Union[str, dict]


def matching_preset(shape: ModelShape) -> Optional[str]:
    """The preset that is ``shape`` once given ``shape``'s vocabulary, if any."""
    for name in PRESETS:
        if get_preset(name, vocab_size=shape.vocab_size) == shape:
            return name
    return None


def record_for(shape: ModelShape) -> Record:
    """What to store as ``extra["model"]``: the preset name when one matches, else the shape's fields."""
    return matching_preset(shape) or dataclasses.asdict(shape)


def shape_from_record(record: Record, vocab_size: Optional[int], where: str) -> ModelShape:
    """The shape ``extra["model"]`` names; ``vocab_size`` (a tokenizer's) fills a preset's vocabulary
    (SODA's 144,644 when None) and must agree with a stored shape's."""
    if isinstance(record, str):
        try:
            return get_preset(record, vocab_size=vocab_size or SODA_LAYOUT.vocab_size)
        except KeyError as error:
            raise ValueError(f"{where}: {error.args[0]}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: extra['model'] is {record!r}, neither a preset name nor a shape's fields")
    fields = {f.name for f in dataclasses.fields(ModelShape)}
    unknown = sorted(set(record) - fields)
    if unknown:
        raise ValueError(f"{where}: extra['model'] has fields {unknown} that ModelShape does not know")
    try:
        if isinstance(record.get("rope_scaling"), dict):
            record = {**record, "rope_scaling": RopeScaling(**record["rope_scaling"])}
        shape = ModelShape(**record)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: extra['model'] is not a valid shape: {error}") from None
    if vocab_size is not None and vocab_size != shape.vocab_size:
        raise ValueError(
            f"{where}: the checkpoint's model has a vocabulary of {shape.vocab_size}, "
            f"the tokenizer {vocab_size}: pass the tokenizer the model was trained with"
        )
    return shape


def checkpoint_model_shape(extra: dict, vocab_size: Optional[int], where: str) -> ModelShape:
    """The model a checkpoint's ``extra`` records, checked against the tokenizer's ``vocab_size``: the
    vocabulary it was trained with (``extra["vocab_size"]``) and its embedding rows. Two tokenizers
    whose vocabularies pad to the same rows would otherwise load without a word and mean other ids."""
    if "model" not in extra:
        raise ValueError(f"{where}: the checkpoint does not say which model it holds (no extra['model'])")
    trained = extra.get("vocab_size")
    if vocab_size is not None and trained is not None and trained != vocab_size:
        raise ValueError(
            f"{where} was trained with a vocabulary of {trained} ids, the tokenizer has {vocab_size}: "
            "pass the tokenizer the model was trained with"
        )
    shape = shape_from_record(extra["model"], vocab_size or trained, where)
    padded = extra.get("padded_vocab_size")
    if padded is not None and padded != shape.padded_vocab_size():
        raise ValueError(
            f"{where}: its embedding has {padded} rows, the model here {shape.padded_vocab_size()}; "
            "pass the tokenizer it was trained with"
        )
    return shape
