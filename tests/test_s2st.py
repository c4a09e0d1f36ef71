"""Speech-to-speech translation: SODA's S2ST sequence with its loss flags, and a tiny model fine-tuned on a
made-up set that translates a source utterance back into its target text and speech."""

import numpy as np
import pytest

from megatron_soda.data.formats import Kind, parse, render
from megatron_soda.data.indexed_dataset import vocab_record, write_dataset
from megatron_soda.data.s2st_format import S2STExample, Variant, s2st_document, tagged, translation_prompt
from megatron_soda.tokenizer import build_soda_tokenizer, load_soda_tokenizer, save_soda_tokenizer, train_bpe

PAIRS = [("fr", "le chat dort", "the cat sleeps"), ("de", "der hund bellt", "the dog barks")]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("s2st_tok")
    texts = [t for _, source, target in PAIRS for t in (source, target)] + ["<language>fr</language>"]
    save_soda_tokenizer(build_soda_tokenizer(train_bpe(texts * 4, vocab_size=300)), root / "tok")
    return load_soda_tokenizer(root / "tok")


def examples(layout, frames=(5, 6)):
    rng = np.random.default_rng(0)
    return [
        S2STExample(
            source_codes=rng.integers(0, layout.codebook_size, (layout.num_codebooks, frames[0])),
            source_language=language,
            source_text=source,
            target_text=target,
            target_codes=rng.integers(0, layout.codebook_size, (layout.num_codebooks, frames[1])),
        )
        for language, source, target in PAIRS
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


def test_a_model_fine_tuned_on_made_up_pairs_translates_a_source_into_its_target_text_and_speech(tokenizer, tmp_path):
    from megatron_soda.convert.solo import one_process_group
    from megatron_soda.inference.engine import MegatronGenerator
    from megatron_soda.inference.loading import load_megatron_model
    from megatron_soda.inference.s2st import translate
    from megatron_soda.inference.sampling import SamplingConfig
    from tests.test_pretrain import pretrain_process

    layout = tokenizer.layout
    tokenizer.save(tmp_path / "tok")
    pairs = examples(layout)
    documents = [render(s2st_document(e, tokenizer, Variant.LM), layout).ids for e in pairs]
    write_dataset(
        tmp_path / "s2st",
        np.concatenate(documents * 100),
        np.array([len(d) for d in documents] * 100),
        layout.vocab_size,
        vocab=vocab_record(layout, tmp_path / "tok"),
    )
    pretrain_process(
        *("--model", "tiny", "--tokenizer", tmp_path / "tok", "--data-path", tmp_path / "s2st", "--split", "100,0,0"),
        *("--seq-length", 256, "--micro-batch-size", 2, "--global-batch-size", 4, "--train-iters", 150),
        *("--lr", 1e-2, "--lr-warmup-iters", 5, "--save", tmp_path / "ckpt", "--skip-data-validation"),
    )
    requests = [S2STExample(e.source_codes, e.source_language, e.source_text) for e in pairs]
    with one_process_group(megatron_parallel=True, purpose="generation"):
        model, shape, _ = load_megatron_model(tmp_path / "ckpt", layout.vocab_size)
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=120)
        results = translate(MegatronGenerator(model, layout, shape.vocab_size), requests, tokenizer, greedy, greedy)
    for example, result in zip(pairs, results):
        assert result.text.stop == layout.text_end_id and result.speech.stop == layout.audio_end_id
        assert tokenizer.decode(result.text.ids) == example.target_text
        np.testing.assert_array_equal(layout.ids_to_codes(result.speech.ids), example.target_codes)
