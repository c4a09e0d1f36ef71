"""SODA's unified tokenizer (docs/recipe.md "Audio tokens", "Vocabulary"): ids, string form, files, safety.

Nothing is downloaded: Llama 3's tokenizer is stood in for by a byte-level BPE of the same size with
the same special tokens, and the small base is trained here.
"""

import json
import time
import unicodedata

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from megatron_soda.tokenizer import (
    SODA_LAYOUT,
    SodaTokenizer,
    VocabLayout,
    audio_indices_to_string,
    build_soda_tokenizer,
    layout_from_tokenizer,
    load_soda_tokenizer,
    save_soda_tokenizer,
    string_to_audio_indices,
    train_bpe,
)
from megatron_soda.tokenizer.layout import SPECIAL_TOKENS

ALL_AUDIO = 8 * 2048
FEFF_INDEX = 0xFEFF - 0xE000  # the byte-order mark; a utf-8-sig reader strips it at the start of a file


def llama3_stand_in() -> Tokenizer:
    """Llama 3's shape: 128,000 byte-level BPE entries (bytes, then unreachable fillers), no normalizer,
    then 256 special added tokens from 128,000 (begin/end of text, reserved), BOS prepended by default."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(alphabet)}
    vocab.update({f"<filler_{i}>": i for i in range(len(alphabet), 128_000)})
    base = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base.decoder = decoders.ByteLevel()
    names = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(254)]
    base.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in names])
    base.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 128_000)]
    )
    return base


def corpus(n=400):
    rng = np.random.default_rng(0)
    words = "the a speech model reads audio tokens and text while we listen to short clear words".split()
    return [" ".join(rng.choice(words, size=12)) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def llama_base():
    return llama3_stand_in()


@pytest.fixture(scope="module")
def llama_hf(llama_base):
    return build_soda_tokenizer(llama_base)


@pytest.fixture(scope="module")
def soda(llama_hf):
    return SodaTokenizer(llama_hf, layout_from_tokenizer(llama_hf, 8, 2048))


@pytest.fixture(scope="module")
def tiny_base():
    return train_bpe(corpus(), vocab_size=1024)


@pytest.fixture(scope="module")
def tiny_soda(tiny_base):
    hf = build_soda_tokenizer(tiny_base)
    return SodaTokenizer(hf, layout_from_tokenizer(hf))


@pytest.fixture(scope="module")
def saved_dir(soda, tmp_path_factory):
    directory = tmp_path_factory.mktemp("soda_tokenizer")
    soda.save(directory)
    return directory


def all_audio_from_feff():
    """All 16,384 audio indices, starting at U+FEFF so that a BOM-stripping reader would fail."""
    return np.roll(np.arange(ALL_AUDIO), -FEFF_INDEX)


# --- ids ---------------------------------------------------------------------------------------------


def test_llama3_sized_base_gives_sodas_released_ids(llama_base):
    started = time.perf_counter()
    hf = build_soda_tokenizer(llama_base)
    print(f"\nbuilding from a 128,256-token base: {time.perf_counter() - started:.2f} s")
    ids = hf.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == [128_256, 128_257, 128_258, 128_259]
    audio = hf.convert_tokens_to_ids(list(audio_indices_to_string(np.arange(ALL_AUDIO))))
    k, c = np.divmod(np.arange(ALL_AUDIO), 2048)
    np.testing.assert_array_equal(audio, 128_260 + k * 2048 + c)
    assert len(hf) == 144_644
    assert (hf.bos_token_id, hf.eos_token_id) == (128_000, 128_001)
    assert layout_from_tokenizer(hf, 8, 2048) == SODA_LAYOUT
    assert llama_base.get_vocab_size(with_added_tokens=True) == 128_256  # the base is not modified


@pytest.mark.parametrize("num_codebooks,codebook_size", [(8, 2048), (4, 1024)], ids=["mimi-8x2048", "encodec-4x1024"])
def test_small_base_gets_begin_end_of_text_then_the_same_shape(tiny_base, num_codebooks, codebook_size):
    trained = tiny_base.get_vocab_size(with_added_tokens=True)
    assert tiny_base.token_to_id("<|begin_of_text|>") is None
    hf = build_soda_tokenizer(tiny_base, num_codebooks, codebook_size)
    base = trained + 2
    assert (hf.bos_token_id, hf.eos_token_id) == (trained, trained + 1)
    assert hf.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [base, base + 1, base + 2, base + 3]
    audio = hf.convert_tokens_to_ids(list(audio_indices_to_string(np.arange(num_codebooks * codebook_size))))
    assert audio == list(range(base + 4, base + 4 + num_codebooks * codebook_size))
    assert len(hf) == base + 4 + num_codebooks * codebook_size
    assert layout_from_tokenizer(hf, num_codebooks, codebook_size) == VocabLayout(
        base, num_codebooks, codebook_size, bos_id=trained, eos_id=trained + 1
    )


def test_base_may_be_a_tokenizer_json_file_or_directory(tiny_base, tiny_soda, tmp_path):
    tiny_base.save(str(tmp_path / "tokenizer.json"))
    for source in (tmp_path / "tokenizer.json", tmp_path, str(tmp_path)):
        assert build_soda_tokenizer(source).get_vocab() == tiny_soda.hf.get_vocab()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        build_soda_tokenizer(tmp_path / "missing")


def test_an_already_extended_tokenizer_is_not_extended_again(tiny_soda):
    with pytest.raises(ValueError, match="already has"):
        build_soda_tokenizer(tiny_soda.hf)


def test_train_bpe_is_deterministic_and_leaves_specials_to_the_builder():
    first, second = train_bpe(corpus(), 512), train_bpe(corpus(), 512)
    assert first.to_str() == second.to_str()
    assert first.get_vocab_size(with_added_tokens=True) <= 512
    assert first.get_added_tokens_decoder() == {} and first.normalizer is None


# --- the string form ---------------------------------------------------------------------------------


def test_audio_index_is_the_character_at_offset_0xE000():
    s = audio_indices_to_string([0, 6399, 6400, FEFF_INDEX, 0xFFFE - 0xE000, 16383])
    assert s == "\ue000\uf8ff\uf900\ufeff\ufffe\U00011fff"
    np.testing.assert_array_equal(string_to_audio_indices(s), [0, 6399, 6400, FEFF_INDEX, 0xFFFE - 0xE000, 16383])
    assert audio_indices_to_string([]) == "" and string_to_audio_indices("").dtype == np.int64


@pytest.mark.parametrize(
    "text,position", [("\ue000a", 1), ("\U00012000", 0), ("\ue001\ud800", 1)], ids=["ascii", "past-16383", "surrogate"]
)
def test_non_audio_characters_are_refused_by_position(text, position):
    with pytest.raises(ValueError, match=f"character {position} .* is not an audio character"):
        string_to_audio_indices(text)


def test_audio_indices_outside_the_block_are_refused_by_position():
    with pytest.raises(ValueError, match="index 16384 at position 1"):
        audio_indices_to_string([0, 16384])
    with pytest.raises(ValueError, match="index 1024 at position 0"):
        audio_indices_to_string([1024], num_audio_tokens=1024)


def test_all_audio_characters_round_trip_through_the_tokenizer(soda):
    indices = all_audio_from_feff()
    s = audio_indices_to_string(indices)
    assert unicodedata.normalize("NFC", s) != s  # the premise: anything that normalizes breaks audio
    ids = soda.string_to_ids(s)
    np.testing.assert_array_equal(ids, SODA_LAYOUT.audio_offset + indices)
    assert soda.ids_to_string(ids) == s
    assert soda.decode(ids) == s


def test_all_audio_characters_round_trip_through_auto_tokenizer_after_save(saved_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reloaded = AutoTokenizer.from_pretrained(str(saved_dir), local_files_only=True)
    indices = all_audio_from_feff()
    s = audio_indices_to_string(indices)
    ids = reloaded.encode(s, add_special_tokens=False)
    assert ids == (SODA_LAYOUT.audio_offset + indices).tolist()
    assert reloaded.decode(ids, skip_special_tokens=False) == s
    assert len(reloaded) == 144_644 and (reloaded.bos_token_id, reloaded.eos_token_id) == (128_000, 128_001)


def test_all_audio_characters_round_trip_through_utf8_and_json_files(tmp_path):
    indices = all_audio_from_feff()
    s = audio_indices_to_string(indices)
    text_file = tmp_path / "audio.txt"
    text_file.write_text(s, encoding="utf-8")
    assert text_file.read_text(encoding="utf-8") == s
    assert text_file.read_text(encoding="utf-8-sig") != s  # why readers must use plain utf-8
    for ensure_ascii in (True, False):
        json_file = tmp_path / f"audio_{ensure_ascii}.json"
        json_file.write_text(json.dumps({"text": s}, ensure_ascii=ensure_ascii), encoding="utf-8")
        back = json.loads(json_file.read_text(encoding="utf-8"))["text"]
        np.testing.assert_array_equal(string_to_audio_indices(back), indices)


def interleaved(codes: np.ndarray, text: str) -> str:
    """SODA's text-first rendering of one utterance, audio written frame by frame, codebook 0 first."""
    audio = "".join(chr(0xE000 + k * 2048 + codes[k, t]) for t in range(codes.shape[1]) for k in range(8))
    return f"<|begin_of_text|><|text_start|>{text}<|text_end|><|audio_start|>{audio}<|audio_end|><|end_of_text|>"


def test_interleaved_string_round_trips_with_frame_major_audio(soda):
    codes = np.random.default_rng(0).integers(0, 2048, size=(8, 2))
    s = interleaved(codes, "Hello world, 42 times!")
    ids = soda.string_to_ids(s)
    layout = soda.layout
    text = soda.encode_text("Hello world, 42 times!")
    assert ids[:2].tolist() == [layout.bos_id, layout.text_start_id]  # one BOS: the literal one
    np.testing.assert_array_equal(ids[2 : 2 + len(text)], text)
    rest = ids[2 + len(text) :]
    assert rest[:2].tolist() == [layout.text_end_id, layout.audio_start_id]
    np.testing.assert_array_equal(rest[2:18], layout.codes_to_ids(codes))
    assert rest[18:].tolist() == [layout.audio_end_id, layout.eos_id]
    assert soda.ids_to_string(ids) == s == soda.decode(ids)


def test_our_string_form_gives_the_ids_a_plain_hugging_face_load_gives(soda, saved_dir):
    codes = np.random.default_rng(1).integers(0, 2048, size=(8, 5))
    s = interleaved(codes, " spaced  text <|reserved_special_token_3|>")
    reloaded = PreTrainedTokenizerFast(tokenizer_file=str(saved_dir / "tokenizer.json"))
    assert reloaded.encode(s, add_special_tokens=False) == soda.string_to_ids(s).tolist()


def test_ids_outside_the_vocabulary_are_refused_by_position(soda):
    with pytest.raises(ValueError, match="id 144644 at position 1"):
        soda.ids_to_string([0, 144_644])


# --- transcripts and BOS -----------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer", ["soda", "tiny_soda"])
def test_transcripts_cannot_inject_specials_or_audio(tokenizer, request):
    tok = request.getfixturevalue(tokenizer)
    text = "say <|audio_start|> now \ue000 then <|begin_of_text|><|end_of_text|>\ufeff"
    ids = tok.encode_text(text)
    assert (ids < tok.layout.base_size).all()
    assert not np.isin(ids, [tok.layout.bos_id, tok.layout.eos_id]).any()
    assert tok.decode(ids) == text
    # the same characters in the string form are markers and audio: that is the difference
    parsed = tok.string_to_ids(text)
    assert tok.layout.audio_start_id in parsed and tok.layout.audio_offset in parsed


def test_hugging_face_split_special_tokens_calls_do_not_change_our_parsing(soda):
    soda.hf("<|audio_start|>", split_special_tokens=True)  # flips the shared backend's flag
    assert soda.string_to_ids("<|audio_start|>").tolist() == [soda.layout.audio_start_id]
    assert soda.layout.audio_start_id not in soda.encode_text("<|audio_start|>")


def test_bos_is_prepended_only_by_hugging_face_defaults_never_by_our_api(soda, saved_dir):
    reloaded = AutoTokenizer.from_pretrained(str(saved_dir), local_files_only=True)
    assert reloaded("hi").input_ids[0] == 128_000  # the Llama 3 base's post-processor, as released
    assert reloaded("hi", add_special_tokens=False).input_ids[0] != 128_000
    assert soda.encode_text("hi")[0] != 128_000 and soda.string_to_ids("hi")[0] != 128_000


# --- loading and checking ----------------------------------------------------------------------------


def test_load_reads_a_saved_directory_and_a_bare_released_style_tokenizer_json(saved_dir):
    for path in (saved_dir, saved_dir / "tokenizer.json"):
        loaded = load_soda_tokenizer(path)
        assert loaded.layout == SODA_LAYOUT and loaded.vocab_size == 144_644


def test_load_takes_the_codec_shape_from_the_saved_layout(tiny_base, tmp_path):
    save_soda_tokenizer(build_soda_tokenizer(tiny_base, 4, 1024), tmp_path, 4, 1024)
    assert load_soda_tokenizer(tmp_path).layout.num_audio_tokens == 4096
    with pytest.raises(ValueError, match="num_codebooks=8 contradicts"):
        load_soda_tokenizer(tmp_path, num_codebooks=8)


def miswired(base: Tokenizer, wiring: str) -> PreTrainedTokenizerFast:
    """A tokenizer with SODA's tokens in a wrong order or form, as another extender might write it."""
    tok = Tokenizer.from_str(base.to_str())
    tok.add_special_tokens([AddedToken("<|begin_of_text|>", special=True), AddedToken("<|end_of_text|>", special=True)])
    audio = list(audio_indices_to_string(np.arange(ALL_AUDIO)))
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    if wiring == "specials-after-audio":
        tok.add_special_tokens([AddedToken(a, special=True, normalized=False) for a in audio] + specials)
    elif wiring == "two-codes-swapped":
        audio[5], audio[6] = audio[6], audio[5]
        tok.add_special_tokens(specials + [AddedToken(a, special=True, normalized=False) for a in audio])
    else:  # audio as ordinary added tokens: a transcript could turn into audio
        tok.add_special_tokens(specials)
        tok.add_tokens([AddedToken(a, special=False, normalized=False) for a in audio])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")


@pytest.mark.parametrize(
    "wiring,first_wrong",
    [
        ("specials-after-audio", r"id {B} is U\+E000 \(audio index 0\), but .* puts '<\|text_start\|>'"),
        ("two-codes-swapped", r"id {B5} is U\+E006 \(audio index 6\), but .* puts U\+E005"),
        ("audio-not-special", r"id {B4} \(U\+E000 \(audio index 0\)\) must be a special added token"),
    ],
    ids=["specials-after-audio", "two-codes-swapped", "audio-not-special"],
)
def test_load_refuses_a_tokenizer_off_the_layout_naming_the_first_wrong_id(tiny_base, tmp_path, wiring, first_wrong):
    miswired(tiny_base, wiring).save_pretrained(tmp_path)
    base = tiny_base.get_vocab_size(with_added_tokens=True) + 2
    expected = first_wrong.format(B=base, B4=base + 4, B5=base + 4 + 5)
    for path in (tmp_path, tmp_path / "tokenizer.json"):
        with pytest.raises(ValueError, match=expected):
            load_soda_tokenizer(path)


# --- speed (a note, not an assertion) ----------------------------------------------------------------


def test_speed_note_encoding_a_4096_token_interleaved_sequence(soda):
    rng = np.random.default_rng(0)
    pieces = []
    for _ in range(8):  # 8 utterances of 4.5 s (56 frames = 448 audio tokens), each with 59 text bytes
        codes = rng.integers(0, 2048, size=(8, 56))
        pieces.append(interleaved(codes, "the quick brown fox jumps over the lazy dog again and again"))
    s = "".join(pieces)
    ids = soda.string_to_ids(s)
    assert 4000 <= len(ids) <= 4400 and soda.ids_to_string(ids) == s
    timings = {}
    for name, call, arg in (("string_to_ids", soda.string_to_ids, s), ("ids_to_string", soda.ids_to_string, ids)):
        runs = []
        for _ in range(20):
            started = time.perf_counter()
            call(arg)
            runs.append(time.perf_counter() - started)
        timings[name] = 1e3 * float(np.median(runs))
    print(f"\n{len(ids)} tokens: " + ", ".join(f"{k} {v:.2f} ms" for k, v in timings.items()))
