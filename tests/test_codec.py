"""Audio codecs: waveforms -> K x frames codes and back, batched without padding leaking into any clip.

Most tests use small random-init models (config_overrides) so they run in seconds on a CPU; one builds
the default Mimi config, the shape SODA's tokens come from.
"""

import logging

import numpy as np
import pytest
import torch

from megatron_soda.codec import CodecConfig, load_codec
from megatron_soda.codec.base import plan_batches, resolve_dtype
from megatron_soda.codec.tiny import TINY_ENCODEC, TINY_MIMI
from megatron_soda.tokenizer import SODA_LAYOUT, VocabLayout

SMALL = {"mimi": TINY_MIMI, "encodec": TINY_ENCODEC}


def small_codec(name, **options):
    return load_codec(CodecConfig(name=name, random_init=True, config_overrides=SMALL[name], **options))


@pytest.fixture(scope="module", params=["mimi", "encodec"])
def codec(request):
    return small_codec(request.param)


def speech_like(num_samples, seed=0):
    """A chirp under a moving envelope plus noise: enough change over time to vary a random codec's codes."""
    t = np.arange(num_samples) / 24_000
    chirp = np.sin(2 * np.pi * (100 + 2000 * t) * t) * np.abs(np.sin(2 * np.pi * 1.5 * t + seed))
    noise = np.random.default_rng(seed).standard_normal(num_samples)
    return (0.5 * chirp + 0.05 * noise).astype(np.float32)


def test_default_mimi_is_sodas_codec_8_codebooks_of_2048_at_12_5_hz():
    codec = load_codec(CodecConfig(random_init=True))
    assert (codec.sample_rate, codec.frame_rate, codec.samples_per_frame) == (24_000, 12.5, 1920)
    assert (codec.num_codebooks, codec.codebook_size, codec.model.config.num_quantizers) == (8, 2048, 32)
    (codes,) = codec.encode([speech_like(24_000)])
    assert codes.shape == (8, 13) and codes.dtype == np.int64 and len(np.unique(codes)) > 8
    layout = VocabLayout(num_codebooks=codec.num_codebooks, codebook_size=codec.codebook_size)
    assert layout == SODA_LAYOUT
    np.testing.assert_array_equal(layout.ids_to_codes(layout.codes_to_ids(codes)), codes)


@pytest.mark.parametrize("num_samples", [1, 1919, 1920, 1921, 24_000])
def test_mimi_codes_have_k_rows_and_one_column_per_started_frame(num_samples):
    codec = small_codec("mimi")
    (codes,) = codec.encode([speech_like(num_samples)])
    assert codes.shape == (8, codec.num_frames(num_samples)) == (8, -(-num_samples // 1920))
    assert codes.dtype == np.int64 and 0 <= codes.min() and codes.max() < codec.codebook_size


def test_fewer_mimi_codebooks_are_a_prefix_of_more():
    wave = speech_like(48_000)
    (eight,) = small_codec("mimi").encode([wave])
    (three,) = small_codec("mimi", num_codebooks=3).encode([wave])
    (thirty_two,) = small_codec("mimi", num_codebooks=32).encode([wave])
    assert three.shape == (3, 25) and thirty_two.shape == (32, 25)
    np.testing.assert_array_equal(three, eight[:3])
    np.testing.assert_array_equal(thirty_two[:8], eight)


@pytest.mark.parametrize("bandwidth, num_codebooks", [(1.5, 2), (3.0, 4), (6.0, 8), (12.0, 16), (24.0, 32)])
def test_encodec_bandwidth_sets_the_number_of_codebooks(bandwidth, num_codebooks):
    codec = small_codec("encodec", bandwidth=bandwidth)
    assert (codec.sample_rate, codec.frame_rate, codec.samples_per_frame) == (24_000, 75, 320)
    assert codec.codebook_size == 1024
    assert codec.num_codebooks == num_codebooks
    (codes,) = codec.encode([speech_like(24_001)])
    assert codes.shape == (num_codebooks, 76)
    assert 0 <= codes.min() and codes.max() < 1024


def test_encodec_defaults_to_6_kbps_8_codebooks():
    assert small_codec("encodec").num_codebooks == 8


def test_decode_returns_frames_times_hop_float32_samples(codec):
    codes = codec.encode([speech_like(n) for n in (24_000, 5_000)])
    audio = codec.decode(codes)
    assert [a.shape for a in audio] == [(c.shape[1] * codec.samples_per_frame,) for c in codes]
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in audio)


def test_codes_match_the_transformers_models_own_encode_and_decode(codec):
    """The codec calls the encoder and quantizer separately (fp32 quantizer); in fp32 that is the same computation."""
    wave = speech_like(10 * codec.samples_per_frame)
    (codes,) = codec.encode([wave])
    (audio,) = codec.decode([codes])
    model, x = codec.model, torch.from_numpy(wave)[None, None]
    with torch.inference_mode():
        if codec.name == "mimi":
            reference = model.encode(x, num_quantizers=codec.num_codebooks).audio_codes[0]
            reference_audio = model.decode(torch.from_numpy(codes)[None]).audio_values
        else:  # [chunks, batch, K, frames], and one scale per chunk (None: the 24 kHz model does not normalise)
            encoded = model.encode(x, bandwidth=codec.bandwidth)
            assert encoded.audio_codes.shape[:2] == (1, 1) and encoded.audio_scales == [None]
            reference = encoded.audio_codes[0, 0]
            reference_audio = model.decode(torch.from_numpy(codes)[None, None], [None]).audio_values
    np.testing.assert_array_equal(codes, reference.numpy())
    np.testing.assert_allclose(audio, reference_audio[0, 0].numpy(), atol=1e-6)


@pytest.mark.parametrize("name", ["mimi", "encodec"])
def test_batched_encoding_equals_encoding_each_clip_alone(name):
    """Padding never reaches a clip's codes.

    Run in float64: in float32 the batch's shape changes the latents' rounding (~1e-6 relative), which flips
    the rare code whose two nearest centroids tie within it (measured with the default random models:
    13 of 27,808 Mimi codes and 3 of 173,384 EnCodec codes, each a tie within 5e-8 relative distance).
    """
    alone_codec = small_codec(name, dtype="float64")
    batched = small_codec(name, dtype="float64", max_batch_seconds=2.0)  # same seed, same weights
    hop = alone_codec.samples_per_frame
    lengths = [24_000, 7_000, 30_001, 5 * hop, 100, 2 * hop + 1, 11 * hop, 7 * hop - 3, 9 * hop + 17, 8 * hop, 13 * hop]
    waves = [speech_like(n, seed=i) for i, n in enumerate(lengths)]
    plan = plan_batches([batched.num_frames(n) * hop for n in lengths], 2 * 24_000, batched.min_batched_frames * hop)
    assert len(plan) > 1 and max(map(len, plan)) > 2  # really batched, with padding
    together = batched.encode(waves)
    alone = [alone_codec.encode([w])[0] for w in waves]
    for i, (a, b) in enumerate(zip(together, alone)):
        np.testing.assert_array_equal(a, b, err_msg=f"clip {i} of {lengths[i]} samples")
    assert len(np.unique(np.concatenate([c[-1] for c in alone]))) > 5  # codes vary: the check has teeth


def test_batched_decoding_matches_decoding_each_alone(codec):
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, codec.codebook_size, (codec.num_codebooks, t)) for t in (20, 3, 13, 7, 1)]
    together = codec.decode(codes)
    for c, audio in zip(codes, together):
        # float sums regroup with the batch shape: equal to float32 rounding, not bit for bit
        np.testing.assert_allclose(audio, codec.decode([c])[0], atol=1e-4)


def test_results_come_back_in_input_order(codec):
    lengths = [3_000, 48_000, 10_000, 48_000, 1_000]
    waves = [speech_like(n, seed=n) for n in lengths]
    codes = codec.encode(waves)
    assert [c.shape[1] for c in codes] == [codec.num_frames(n) for n in lengths]
    np.testing.assert_array_equal(codes[1], codes[3])  # the same clip gives the same codes wherever it sits
    assert [a.shape[0] for a in codec.decode(codes)] == [c.shape[1] * codec.samples_per_frame for c in codes]


def test_empty_list_and_empty_clip(codec):
    assert codec.encode([]) == [] and codec.decode([]) == []
    (codes,) = codec.encode([np.zeros(0, np.float32)])
    assert codes.shape == (codec.num_codebooks, 0)
    assert codec.decode([codes])[0].shape == (0,)


def test_inputs_that_are_not_mono_float_waveforms_are_refused(codec):
    with pytest.raises(ValueError, match=r"waveform 1 has shape \[2, 24000\].*mono 1-D.*24000 Hz"):
        codec.encode([speech_like(100), np.zeros((2, 24_000), np.float32)])
    with pytest.raises(TypeError, match="sequence of arrays"):
        codec.encode(speech_like(100))
    with pytest.raises(ValueError, match="dtype int16"):
        codec.encode([np.zeros(100, np.int16)])
    with pytest.raises(ValueError, match="NaN"):
        codec.encode([np.full(100, np.nan, np.float32)])


def test_codes_of_the_wrong_shape_or_range_are_refused(codec):
    k, c = codec.num_codebooks, codec.codebook_size
    with pytest.raises(ValueError, match=rf"shape \[{k - 1}, 4\]"):
        codec.decode([np.zeros((k - 1, 4), np.int64)])
    with pytest.raises(ValueError, match=rf"outside \[0, {c}\)"):
        codec.decode([np.full((k, 4), c, np.int64)])


@pytest.mark.parametrize("name", ["mimi", "encodec"])
def test_quantizer_keeps_exact_float32_codebooks_when_the_network_runs_in_bfloat16(name):
    codec = small_codec(name, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in codec.model.encoder.parameters()} == {torch.bfloat16}
    exact = small_codec(name).model.quantizer.state_dict()  # same seed, float32 throughout
    for key, value in codec.model.quantizer.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, exact[key]), key
    (codes,) = codec.encode([speech_like(24_000)])
    assert codes.shape == (codec.num_codebooks, codec.num_frames(24_000)) and codes.max() < codec.codebook_size
    assert codec.decode([codes])[0].dtype == np.float32
    assert {t.dtype for t in small_codec(name, dtype="float64").model.quantizer.buffers()} == {torch.float64}


def test_auto_dtype_is_bfloat16_on_gpu_and_float32_on_cpu():
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="unknown codec dtype"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_random_init_is_deterministic_per_seed():
    wave = [speech_like(48_000)]
    first, again = small_codec("mimi").encode(wave)[0], small_codec("mimi").encode(wave)[0]
    other = load_codec(CodecConfig(random_init=True, seed=1, config_overrides=TINY_MIMI)).encode(wave)[0]
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()


def test_random_init_warns_loudly_that_tokens_are_meaningless(caplog):
    with caplog.at_level(logging.WARNING, logger="megatron_soda.codec.loading"):
        codec = small_codec("encodec")
    assert codec.random_init
    assert any(r.levelno == logging.WARNING and "MEANINGLESS" in r.getMessage() for r in caplog.records)


def test_pretrained_codec_loads_from_a_local_directory(tmp_path):
    random = small_codec("mimi")
    random.model.save_pretrained(tmp_path)
    loaded = load_codec(CodecConfig(path=str(tmp_path)))
    assert not loaded.random_init
    wave = [speech_like(24_000)]
    np.testing.assert_array_equal(loaded.encode(wave)[0], random.encode(wave)[0])


@pytest.mark.parametrize(
    "config, message",
    [
        (CodecConfig(), r"--codec-path .*kyutai/mimi.* or --codec-random-init"),
        (CodecConfig(name="encodec"), r"--codec-path .*facebook/encodec_24khz"),
        (CodecConfig(name="dac", random_init=True), "unknown codec 'dac'; choose one of mimi, encodec"),
        (CodecConfig(random_init=True, num_codebooks=33, config_overrides=TINY_MIMI), r"32 codebooks.*choose 1\.\.32"),
        (CodecConfig(random_init=True, num_codebooks=0, config_overrides=TINY_MIMI), "num_codebooks=0"),
        (CodecConfig(random_init=True, bandwidth=6.0), "bandwidth does not apply to mimi"),
        (CodecConfig(name="encodec", random_init=True, num_codebooks=8), "num_codebooks does not apply to encodec"),
        (CodecConfig(name="encodec", random_init=True, bandwidth=5.0), r"5 kbps .*6 \(8 codebooks\)"),
        (CodecConfig(path="kyutai/mimi", random_init=True), "not both"),
        (CodecConfig(path="kyutai/mimi", config_overrides={"num_quantizers": 8}), "random-init codecs only"),
        (CodecConfig(random_init=True, config_overrides={"num_quantizer": 8}), r"\['num_quantizer'\] are not fields"),
    ],
)
def test_load_codec_refuses_bad_configs_with_a_clear_message(config, message):
    with pytest.raises(ValueError, match=message):
        load_codec(config)


def test_missing_codec_path_names_the_flag_and_the_path(tmp_path):
    with pytest.raises(OSError, match=r"--codec-path '.*absent'"):
        load_codec(CodecConfig(path=str(tmp_path / "absent")))


def test_batch_plan_bounds_padded_size_and_covers_every_clip_once():
    lengths = [5, 1, 9, 3, 3, 12, 7, 0]
    plan = plan_batches(lengths, max_size=15, min_batched=3)
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    for batch in plan:
        longest = max(lengths[i] for i in batch)
        assert lengths[batch[0]] == longest  # longest first: the batch's padded length
        assert len(batch) * longest <= 15 or len(batch) == 1
        assert len(batch) == 1 or min(lengths[i] for i in batch) >= 3  # short clips go alone
    assert [5] in plan  # 12 exceeds the budget with any partner
    assert plan == plan_batches(lengths, max_size=15, min_batched=3)
