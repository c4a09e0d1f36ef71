"""Speech-to-speech translation: SODA's S2ST sequence with its loss flags (fine-tuning on it:
tests/test_finetune.py)."""

import numpy as np
import pytest

from megatron_soda.data.formats import Kind, parse, render
from megatron_soda.data.s2st_format import S2STExample, Variant, s2st_document, tagged, translation_prompt
from megatron_soda.tokenizer import build_soda_tokenizer, load_soda_tokenizer, save_soda_tokenizer, train_bpe

PAIRS = [("fr", "le chat dort", "the cat sleeps"), ("de", "der hund bellt", "the dog barks")]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("s2st_tok")
    texts = [t for _, source, target in PAIRS for t in (source, target)] + ["<language>fr</language>"]
    save_soda_tokenizer(build_soda_tokenizer(train_bpe(texts * 4, vocab_size=300)), root / "tok")
    return load_soda_tokenizer(root / "tok")


def examples(layout, frames=(5, 6), pairs=PAIRS):
    """Made-up S2ST examples: random source and target codes, each pair's texts."""
    rng = np.random.default_rng(0)
    return [
        S2STExample(
            source_codes=rng.integers(0, layout.codebook_size, (layout.num_codebooks, frames[0])),
            source_language=language,
            source_text=source,
            target_text=target,
            target_codes=rng.integers(0, layout.codebook_size, (layout.num_codebooks, frames[1])),
        )
        for language, source, target in pairs
    ]


def test_the_sequence_is_sodas_and_the_sft_variant_trains_the_response_only(tokenizer):
    layout = tokenizer.layout
    example = examples(layout)[0]
    audio = tokenizer.ids_to_string
    rendered = render(s2st_document(example, tokenizer, Variant.SFT), layout)
    source, target = (audio(layout.codes_to_ids(c)) for c in (example.source_codes, example.target_codes))
    assert tokenizer.ids_to_string(rendered.ids) == (
        f"<|begin_of_text|><|audio_start|>{source}<|audio_end|><|text_start|><language>fr</language>le chat dort"
        f"<|text_end|><|text_start|><language>en</language>the cat sleeps<|text_end|><|audio_start|>{target}"
        "<|audio_end|><|end_of_text|>"
    )
    response = tokenizer.ids_to_string(rendered.ids[rendered.loss_mask])
    assert response == f"<|text_start|><language>en</language>the cat sleeps<|text_end|><|audio_start|>{target}" + (
        "<|audio_end|><|end_of_text|>"
    )
    assert render(s2st_document(example, tokenizer, Variant.LM), layout).loss_mask[1:].all()
    # The inference prompt is a prefix of the training sequence, id for id.
    prompt = render(translation_prompt(example, tokenizer), layout, open_end=True).ids
    assert rendered.ids[: len(prompt)].tolist() == prompt.tolist()
    assert [s.kind for s in parse(rendered.ids, layout).segments] == [Kind.AUDIO, Kind.TEXT, Kind.TEXT, Kind.AUDIO]
    with pytest.raises(ValueError, match="language code"):
        tagged("f<r", "x", tokenizer)
