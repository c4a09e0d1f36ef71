"""Structured decoding: with it on, a model (even a random one) only samples well-formed SODA sequences;
with it off, the lenient decoder still turns whatever came out into audio and text."""

import re

import numpy as np
import pytest
import torch

from megatron_soda.codec.tiny import TINY_MIMI
from megatron_soda.data.formats import Kind, parse, parse_lenient, split_documents
from megatron_soda.inference.prompts import build_prompt
from megatron_soda.inference.sampling import SamplingConfig
from megatron_soda.inference.structured import StructuredDecoding
from megatron_soda.tokenizer.layout import VocabLayout

L = VocabLayout(base_size=300, bos_id=0, eos_id=1)
K, C = L.num_codebooks, L.codebook_size
BOS, EOS, TS, TE, AS, AE = L.bos_id, L.eos_id, L.text_start_id, L.text_end_id, L.audio_start_id, L.audio_end_id
TEXT_IDS = set(range(L.base_size)) - {BOS, EOS}
PADDING = 12  # rows of a padded output layer past the layout's vocabulary


def allowed_ids(history, width=L.vocab_size + PADDING):
    """The ids the processor leaves sampleable after ``history`` (one row)."""
    scores = StructuredDecoding(L)(torch.tensor([history], dtype=torch.long), torch.zeros(1, width))
    return set(torch.nonzero(torch.isfinite(scores[0])).flatten().tolist())


def audio_ids(codebook):
    return set(range(L.audio_offset + codebook * C, L.audio_offset + (codebook + 1) * C))


def frame(seed=0):
    return L.codes_to_ids(np.random.default_rng(seed).integers(0, C, size=(K, 1))).tolist()


# The states, on hand-built histories.


@pytest.mark.parametrize("history", [[BOS], [BOS, 5, 6], [BOS, TS, 5, TE], [BOS, AS, *frame(), AE], [EOS, EOS, BOS, 7]])
def test_outside_a_segment_only_text_opening_markers_and_end_of_text_may_follow(history):
    assert allowed_ids(history) == TEXT_IDS | {TS, AS, EOS}


def test_after_end_of_text_a_new_document_may_begin():
    assert allowed_ids([BOS, 5, EOS]) == TEXT_IDS | {TS, AS, EOS, BOS}
    assert allowed_ids([]) == TEXT_IDS | {TS, AS, EOS, BOS}


@pytest.mark.parametrize("history", [[BOS, TS], [BOS, TS, 5, 6], [BOS, AS, *frame(), AE, TS, 9]])
def test_inside_text_only_text_ids_and_the_text_end_marker_may_follow(history):
    assert allowed_ids(history) == TEXT_IDS | {TE}


@pytest.mark.parametrize("tokens_since_start", range(2 * K + 2))
def test_inside_audio_only_the_next_codebook_may_follow_and_the_end_marker_only_between_frames(tokens_since_start):
    content = (frame(1) + frame(2) + frame(3))[:tokens_since_start]
    codebook = tokens_since_start % K
    expected = audio_ids(codebook) | ({AE} if codebook == 0 else set())
    assert allowed_ids([BOS, TS, 5, TE, AS, *content]) == expected


def test_padding_rows_of_the_output_layer_are_never_sampled():
    for history in ([BOS], [BOS, TS], [BOS, AS], [BOS, AS, *frame()[:7]], [BOS, 5, EOS]):
        assert max(allowed_ids(history)) < L.vocab_size


def test_every_row_of_a_left_padded_batch_gets_its_own_state():
    rows = [[BOS, 5, 6, 7], [BOS, AS, *frame()[:3]], [BOS, TS, 5], [BOS, AS, *frame(), AE]]
    width = max(len(r) for r in rows)
    batch = torch.tensor([[EOS] * (width - len(r)) + r for r in rows])  # pads are end-of-text, on the left
    scores = StructuredDecoding(L, vocab_size=L.vocab_size + PADDING)(
        batch, torch.zeros(len(rows), L.vocab_size + PADDING)
    )
    for row, history in enumerate(rows):
        assert set(torch.nonzero(torch.isfinite(scores[row])).flatten().tolist()) == allowed_ids(history)


def test_allowed_scores_pass_through_unchanged_in_their_dtype():
    scores = torch.randn(1, L.vocab_size, dtype=torch.bfloat16)
    out = StructuredDecoding(L)(torch.tensor([[BOS, TS, 5]]), scores)
    assert out.dtype == torch.bfloat16
    allowed = torch.isfinite(out[0])
    assert torch.equal(out[0, allowed], scores[0, allowed]) and torch.isneginf(out[0, ~allowed]).all()


def test_scores_narrower_than_the_layout_are_refused():
    with pytest.raises(ValueError, match="fewer than the layout's"):
        StructuredDecoding(L)(torch.tensor([[BOS]]), torch.zeros(1, L.vocab_size - 1))
    with pytest.raises(ValueError, match="smaller than the layout's"):
        StructuredDecoding(L, vocab_size=L.vocab_size - 1)


# Checks on what a model sampled.


def audio_violations(sequence):
    """Positions inside an audio segment holding anything but the next codebook, or ``<|audio_end|>`` mid-frame;
    an independent reading of the rule (a plain loop), not the processor's."""
    violations, since = [], None  # tokens since <|audio_start|>; None outside audio
    for position, token in enumerate(sequence):
        if since is None:
            since = 0 if token == AS else None
            continue
        if token == AE and since % K == 0:
            since = None
        elif L.is_audio(token) and (token - L.audio_offset) // C == since % K:
            since += 1
        else:
            violations.append(position)
            since = None if token in (AE, EOS, TE) else since + 1
    return violations


def only_cut_off_by_max_new_tokens(sequence):
    """Whether the sequence is well-formed but for being cut off: every document before the last parses
    strictly, and the last one's only problems are its unclosed segment and a partial frame at the very end."""
    documents = list(split_documents(np.asarray(sequence), L))
    for document in documents[:-1]:
        parse(document, L)
    _, problems = parse_lenient(documents[-1], L)
    last_start = len(sequence) - len(documents[-1])
    for problem in problems:
        partial = re.fullmatch(r"incomplete frame at (\d+) \((\d+) of \d+ codebooks\) dropped", problem)
        if partial and last_start + int(partial[1]) + int(partial[2]) == len(sequence):
            continue
        if not re.fullmatch(r"(text|audio) segment opened at \d+ is not closed", problem):
            return False
    return True


def prompts(rng, count):
    """Prompts that start inside audio (TTS, with and without a voice, continuation), inside text (ASR),
    and outside any segment (plain text)."""
    codes = lambda frames: rng.integers(0, C, size=(K, frames))  # noqa: E731
    text = lambda: rng.integers(2, L.base_size, size=int(rng.integers(2, 8)))  # noqa: E731
    makers = [
        lambda: build_prompt("tts", L, text_ids=text()),
        lambda: build_prompt("tts", L, text_ids=text(), reference_text_ids=text(), reference_codes=codes(2)),
        lambda: build_prompt("continue", L, codes=codes(int(rng.integers(1, 4)))),
        lambda: build_prompt("asr", L, codes=codes(2)),
        lambda: build_prompt("text", L, text_ids=text()),
    ]
    return [makers[i % len(makers)]() for i in range(count)]


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a small shared CPU, thread hand-offs for these tiny tensors cost more than the
    work (a 3x slower decode loop)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def generator(megatron_world, one_thread):
    from megatron_soda.inference.engine import MegatronGenerator
    from megatron_soda.models.gpt import build_gpt_model, transformer_config
    from megatron_soda.models.presets import get_preset

    shape = get_preset("tiny", vocab_size=L.vocab_size)
    torch.manual_seed(0)
    config = transformer_config(shape, init_method_std=0.2, attention_backend="sdpa")
    return MegatronGenerator(build_gpt_model(shape, config, attention_backend="sdpa"), L)


def test_structured_decoding_never_samples_a_wrong_codebook_inside_audio(generator):
    rows, new_tokens = 16, 625  # 10,000 sampled tokens
    batch = prompts(np.random.default_rng(0), rows)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=new_tokens, seed=0)
    generations = generator.generate(batch, sampling, logits_processors=[StructuredDecoding(L)])

    assert sum(len(g.ids) for g in generations) == rows * new_tokens == 10_000
    for generation in generations:
        sequence = np.concatenate([generation.prompt, generation.ids])
        assert audio_violations(sequence) == []
        assert only_cut_off_by_max_new_tokens(sequence)
        _, problems = parse_lenient(sequence, L)
        assert not [p for p in problems if "codebook" in p and "incomplete frame" not in p]
    # The random model does wander: it opens segments of both kinds and closes text, not only continues one.
    new = np.concatenate([g.ids for g in generations])
    assert {TS, TE, AS} <= set(new.tolist())


def test_without_structured_decoding_the_lenient_decoder_still_turns_raw_output_into_wav_and_text(generator):
    from megatron_soda.codec import CodecConfig, load_codec

    batch = prompts(np.random.default_rng(1), 10)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=200, seed=0)
    generations = generator.generate(batch, sampling)
    codec = load_codec(CodecConfig(name="mimi", random_init=True, config_overrides=TINY_MIMI))

    all_problems, decoded_frames = [], 0
    for generation in generations:
        document, problems = parse_lenient(np.concatenate([generation.prompt, generation.ids]), L)
        all_problems += problems
        audio = [L.ids_to_codes(s.ids) for s in document.segments if s.kind is Kind.AUDIO]
        for codes, wave in zip(audio, codec.decode(audio)):
            assert wave.dtype == np.float32 and len(wave) == codes.shape[1] * codec.samples_per_frame
            assert np.isfinite(wave).all()
            decoded_frames += codes.shape[1]
        for segment in document.segments:
            if segment.kind is not Kind.AUDIO:
                assert set(segment.ids.tolist()) <= TEXT_IDS
    assert decoded_frames > 0
    assert len(all_problems) > 100  # the raw output really was malformed


def test_the_same_processor_constrains_transformers_generate(one_thread):
    import transformers  # a dependency of the project

    width = -(-L.vocab_size // 64) * 64 + 64  # a padded output layer: ids past the layout exist
    config = transformers.Qwen3Config(
        vocab_size=width,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 1.0)  # flatter than the default init: every kind of id gets drawn
    batch = prompts(np.random.default_rng(2), 5)
    length = max(len(p) for p in batch)
    input_ids = torch.tensor([[EOS] * (length - len(p)) + p.tolist() for p in batch])
    attention_mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in batch])

    processors = transformers.LogitsProcessorList([StructuredDecoding(L, vocab_size=width)])
    output = model.generate(
        input_ids,
        attention_mask=attention_mask,
        logits_processor=processors,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=80,
        pad_token_id=EOS,
        eos_token_id=None,
    )
    assert output.shape == (len(batch), length + 80)  # 400 sampled tokens
    assert int(output.max()) < L.vocab_size
    for row, prompt in enumerate(batch):
        sequence = np.concatenate([prompt, output[row, length:].numpy()])
        assert audio_violations(sequence) == []
        assert only_cut_off_by_max_new_tokens(sequence)
