"""Build SODA's unified tokenizer from a base text tokenizer, save it, and load it back checked.

The order is SODA's (codec-bpe's extender as SODA ran it): the base's B tokens, then
``<|text_start|>``, ``<|text_end|>``, ``<|audio_start|>``, ``<|audio_end|>`` (B .. B+3), then the
K x C audio characters (B+4 ..), all as special added tokens that are never normalized. From Llama 3's
128,256-token tokenizer this gives SODA's released ids exactly. A base without ``<|begin_of_text|>`` /
``<|end_of_text|>`` (the tiny test BPE) gets them first, so they count in B.

The base's post-processor is kept: from Llama 3 the saved tokenizer prepends ``<|begin_of_text|>`` when
Hugging Face is called with its default ``add_special_tokens=True``, as SODA's released tokenizer does.
``SodaTokenizer`` never relies on that. ``save_hf_tokenizer`` writes the copy that goes into a Hugging Face
export, set up for transformers' users: BOS prepended by default whatever the base (training's sequences
start with it), ``<|end_of_text|>`` as pad token, a real ``model_max_length``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
from tokenizers import AddedToken, Tokenizer, processors
from transformers import PreTrainedTokenizerFast

from megatron_soda.tokenizer.layout import BEGIN_OF_TEXT, END_OF_TEXT, SODA_LAYOUT, SPECIAL_TOKENS, VocabLayout
from megatron_soda.tokenizer.pua import audio_indices_to_string
from megatron_soda.tokenizer.soda_tokenizer import LAYOUT_FILE, SodaTokenizer, check_vocabulary


def build_soda_tokenizer(
    base, num_codebooks: int = SODA_LAYOUT.num_codebooks, codebook_size: int = SODA_LAYOUT.codebook_size
) -> PreTrainedTokenizerFast:
    """Extend ``base`` (a tokenizer.json path, a directory holding one, a ``tokenizers.Tokenizer`` or a
    Hugging Face fast tokenizer; never modified) with SODA's specials and a K x C audio block."""
    backend = _load_base(base)
    _check_base(backend)
    missing = [token for token in (BEGIN_OF_TEXT, END_OF_TEXT) if backend.token_to_id(token) is None]
    backend.add_special_tokens([_special(token) for token in missing])
    num_audio = num_codebooks * codebook_size
    backend.add_special_tokens([_special(token) for token in SPECIAL_TOKENS])
    backend.add_special_tokens([_special(char) for char in audio_indices_to_string(np.arange(num_audio), num_audio)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BEGIN_OF_TEXT, eos_token=END_OF_TEXT, clean_up_tokenization_spaces=False
    )
    check_vocabulary(hf.backend_tokenizer, layout_from_tokenizer(hf, num_codebooks, codebook_size))
    return hf


def layout_from_tokenizer(
    hf_tokenizer, num_codebooks: int = SODA_LAYOUT.num_codebooks, codebook_size: int = SODA_LAYOUT.codebook_size
) -> VocabLayout:
    """The layout an extended tokenizer claims: B = its size less the SODA block; BOS/EOS as it sets them.
    Claims only: ``check_vocabulary`` (run by ``SodaTokenizer``) verifies the ids."""
    block = len(SPECIAL_TOKENS) + num_codebooks * codebook_size
    base_size = len(hf_tokenizer) - block
    if base_size <= 0:
        raise ValueError(
            f"the tokenizer has {len(hf_tokenizer)} tokens, no more than the {block} of SODA's block "
            f"({num_codebooks} x {codebook_size} audio + 4 specials): it is not an extended tokenizer"
        )
    if hf_tokenizer.bos_token_id is None or hf_tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer sets no bos_token/eos_token; SODA's are {BEGIN_OF_TEXT} and {END_OF_TEXT}")
    return VocabLayout(base_size, num_codebooks, codebook_size, hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id)


def save_soda_tokenizer(
    tokenizer, directory, num_codebooks: int = SODA_LAYOUT.num_codebooks, codebook_size: int = SODA_LAYOUT.codebook_size
) -> None:
    """Save a ``SodaTokenizer`` or a built Hugging Face tokenizer (checked first) so that
    ``AutoTokenizer.from_pretrained(directory)`` and ``load_soda_tokenizer(directory)`` both read it offline."""
    if not isinstance(tokenizer, SodaTokenizer):
        tokenizer = SodaTokenizer(tokenizer, layout_from_tokenizer(tokenizer, num_codebooks, codebook_size))
    tokenizer.save(directory)


def load_soda_tokenizer(
    path, num_codebooks: Optional[int] = None, codebook_size: Optional[int] = None
) -> SodaTokenizer:
    """Load a saved directory or a bare tokenizer.json (e.g. SODA's released one) and check its ids.

    K and C come from the arguments, else from the directory's layout file, else SODA's 8 x 2048.
    """
    path = Path(path)
    recorded = _recorded_layout(path)
    for name, value in (("num_codebooks", num_codebooks), ("codebook_size", codebook_size)):
        if recorded is not None and value is not None and value != getattr(recorded, name):
            raise ValueError(f"{name}={value} contradicts {path / LAYOUT_FILE} ({name}={getattr(recorded, name)})")
    source = recorded or SODA_LAYOUT
    num_codebooks = num_codebooks or source.num_codebooks
    codebook_size = codebook_size or source.codebook_size
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{path} holds no tokenizer.json (only fast tokenizers are supported)")
        hf = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    else:
        backend = Tokenizer.from_file(str(path))
        for token in (BEGIN_OF_TEXT, END_OF_TEXT):
            if backend.token_to_id(token) is None:
                raise ValueError(f"{path} has no {token} token")
        hf = PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token=BEGIN_OF_TEXT, eos_token=END_OF_TEXT, clean_up_tokenization_spaces=False
        )
    layout = layout_from_tokenizer(hf, num_codebooks, codebook_size)
    if recorded is not None and layout != recorded:
        raise ValueError(f"{path / LAYOUT_FILE} records {recorded}, but the tokenizer files give {layout}")
    try:
        return SodaTokenizer(hf, layout)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
"""The files Hugging Face saves for a fast tokenizer (``save_hf_tokenizer`` writes them anew)."""


def save_hf_tokenizer(path, directory, model_max_length: int) -> SodaTokenizer:
    """The SODA tokenizer at ``path`` (checked by ``load_soda_tokenizer``), saved into ``directory`` for
    Hugging Face users, with its layout file; returns it as loaded back from ``directory``.

    - BOS: ``AutoTokenizer.from_pretrained(directory)("hello")`` gives ``<|begin_of_text|>`` then the text's
      ids, as training's sequences start (``data.formats.render``). A Llama 3 base's post-processor already
      does that and is kept; any other (the demo's BPE has none) is replaced by Llama 3's template.
    - ``pad_token`` is ``<|end_of_text|>``: the exported embedding has only the real vocabulary, so a new
      pad id would have no row; padded positions are masked by ``attention_mask`` anyway.
    - ``model_max_length``: the model's ``max_position_embeddings`` (the longest sequence trained on).
    - ``tokenizer_class`` ``PreTrainedTokenizerFast``, which transformers 4 and 5 both load (5 would write
      its own ``TokenizersBackend``, unknown to 4).

    The specials and audio stay special added tokens, so ``decode(..., skip_special_tokens=True)`` and
    ``pipeline("text-generation")`` drop them: audio decodes to ``''`` there.
    """
    soda = load_soda_tokenizer(path)
    layout = soda.layout
    backend = Tokenizer.from_str(soda.hf.backend_tokenizer.to_str())
    backend.encode_special_tokens = False
    if not _prepends_bos(backend, layout.bos_id):
        backend.post_processor = processors.TemplateProcessing(
            single=f"{BEGIN_OF_TEXT} $A",
            pair=f"{BEGIN_OF_TEXT} $A {BEGIN_OF_TEXT}:1 $B:1",
            special_tokens=[(BEGIN_OF_TEXT, layout.bos_id)],
        )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BEGIN_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    directory = Path(directory)
    SodaTokenizer(hf, layout).save(directory)
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    saved = load_soda_tokenizer(directory)
    if saved.layout != layout or not _prepends_bos(saved.hf.backend_tokenizer, layout.bos_id):
        raise RuntimeError(f"{directory}: the saved tokenizer does not read back as written")
    return saved


def _prepends_bos(backend: Tokenizer, bos_id: int) -> bool:
    """Whether Hugging Face's default encoding (``add_special_tokens=True``) gives exactly BOS + the text."""
    text = "hello world"
    return backend.encode(text).ids == [bos_id] + backend.encode(text, add_special_tokens=False).ids


def _load_base(base) -> Tokenizer:
    """A private copy of the base's ``tokenizers.Tokenizer``."""
    if isinstance(base, Tokenizer):
        return Tokenizer.from_str(base.to_str())
    if hasattr(base, "backend_tokenizer"):
        return Tokenizer.from_str(base.backend_tokenizer.to_str())
    path = Path(base)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path} (only fast tokenizers are supported)")
    return Tokenizer.from_file(str(path))


def _check_base(backend: Tokenizer) -> None:
    """Refuse a base whose ids have holes (new tokens would not land at B) or that is already extended."""
    vocab = backend.get_vocab(with_added_tokens=True)
    size = backend.get_vocab_size(with_added_tokens=True)
    if len(vocab) != size or max(vocab.values()) != size - 1:
        raise ValueError(f"the base's ids are not 0 .. {size - 1} without holes (max id {max(vocab.values())})")
    present = [token for token in SPECIAL_TOKENS if token in vocab]
    if present:
        raise ValueError(f"the base already has {present}: load an extended tokenizer with load_soda_tokenizer")


def _special(content: str) -> AddedToken:
    return AddedToken(content, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)


def _recorded_layout(path: Path) -> Optional[VocabLayout]:
    file = path / LAYOUT_FILE
    if not (path.is_dir() and file.is_file()):
        return None
    return VocabLayout(**json.loads(file.read_text()))
