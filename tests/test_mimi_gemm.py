"""Mimi's GEMM encoder (the CPU default) computes transformers' encoder: same latents up to float rounding,
the same codes but for near-ties, through every layer kind (streamed chunks, dilated and strided
convolutions, zero and replicate padding, sliding-window attention, grouped keys and values)."""

import numpy as np
import pytest
import torch

from megatron_soda.codec import CodecConfig, load_codec
from megatron_soda.codec.cli import check_codec
from megatron_soda.codec.mimi_gemm import MimiGemmEncoder
from megatron_soda.codec.tiny import TINY_MIMI
from megatron_soda.data.codec_job import codec_run
from tests.test_codec import speech_like

HOP = 1920


def mimi(encoder="auto", dtype="float32", **overrides):
    return load_codec(
        CodecConfig(random_init=True, encoder=encoder, dtype=dtype, config_overrides={**TINY_MIMI, **overrides})
    )


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        # a window shorter than the clips, GQA, two residual layers per stage (dilated 3-tap convolutions),
        # every convolution padded by replicating its first (ELU'd) row
        {
            "sliding_window": 5,
            "num_key_value_heads": 1,
            "num_residual_layers": 2,
            "num_hidden_layers": 2,
            "pad_mode": "replicate",
        },
    ],
    ids=["tiny", "window-gqa-dilated-replicate"],
)
@pytest.mark.parametrize("chunk_frames", [1, 3])
def test_latents_equal_transformers_encoder_clip_by_clip(overrides, chunk_frames):
    codec = mimi("transformers", dtype="float64", **overrides)
    gemm = MimiGemmEncoder(codec.model, chunk_frames=chunk_frames, stream_weight_bytes=20_000)
    assert 0 < gemm.streamed < len(gemm.layers)  # early layers chunk by chunk, the rest whole
    clips = [torch.from_numpy(speech_like(n * HOP, seed=n)).double() - 0.3 for n in (1, 4, 13)]  # starts < 0
    with torch.inference_mode():
        reference = [codec.model.encoder(c[None, None]).latents[0] for c in clips]
    for got, want in zip(gemm.latents(clips), reference):
        assert got.shape == want.shape
        assert relative_error(got, want) < 1e-12  # float64: only summation order differs


def test_default_mimi_latents_and_codes_match_transformers_in_float32():
    """SODA's codec shape (8 transformer layers, window 250) on a clip longer than the window (21 s)."""
    fast, slow = (load_codec(CodecConfig(random_init=True, encoder=e)) for e in ("gemm", "transformers"))
    assert (fast.encoder_impl, slow.encoder_impl) == ("gemm", "transformers")
    waves = [speech_like(21 * 24_000 + 5), speech_like(2 * 24_000, seed=1)]
    with torch.inference_mode():
        padded = torch.from_numpy(np.pad(waves[0], (0, -len(waves[0]) % HOP)))
        want = slow.model.encoder(padded[None, None]).latents[0]
    assert relative_error(MimiGemmEncoder(fast.model).latents([padded])[0], want) < 1e-5
    for wave, got, ref in zip(waves, fast.encode(waves), slow.encode(waves)):
        assert got.shape == ref.shape == (8, -(-len(wave) // HOP))
        assert (got == ref).mean() > 0.999  # a code flips only where two centroids tie within rounding


def test_batched_codes_equal_each_clip_alone():
    codec = mimi("gemm", dtype="float64", **{"num_hidden_layers": 2})
    codec.max_batch_seconds = 4.0
    waves = [speech_like(n, seed=n) for n in (24_000, 30_000, 12_345, 1_000, 0, 40_000)]  # one empty
    together = codec.encode(waves)
    assert together[4].shape == (8, 0)
    for wave, codes in zip(waves, together):
        np.testing.assert_array_equal(codec.encode([wave])[0], codes)


def test_encoder_choice_auto_flag_record_and_batch_defaults():
    assert mimi().encoder_impl == "gemm"  # auto on a CPU
    # gemm pads nothing, so large encode batches cost no work; transformers' modules (and decoding) keep 5 s
    assert [mimi().batch_seconds(d) for d in ("encode", "decode")] == [120.0, 5.0]
    assert [mimi("transformers").batch_seconds(d) for d in ("encode", "decode")] == [5.0, 5.0]
    given = load_codec(CodecConfig(random_init=True, config_overrides=TINY_MIMI, max_batch_seconds=7.5))
    assert [given.batch_seconds(d) for d in ("encode", "decode")] == [7.5, 7.5]
    assert codec_run(mimi("transformers"))["encoder"] == "transformers"
    with pytest.raises(ValueError, match="--codec-encoder applies to --codec mimi only"):
        check_codec(CodecConfig(name="encodec", random_init=True, encoder="gemm"))
    with pytest.raises(ValueError, match="unknown Mimi encoder 'fast'"):
        mimi("fast")
    gemm = MimiGemmEncoder(mimi().model)
    with pytest.raises(ValueError, match=r"clip 0: \[1000\] samples; give 1-D clips of whole 1920-sample frames"):
        gemm.latents([torch.zeros(1000)])
    # a model the gemm encoder does not cover: auto falls back, an explicit gemm is refused with the reason
    assert mimi(use_causal_conv=False).encoder_impl == "transformers"
    with pytest.raises(ValueError, match="--codec-encoder gemm cannot run this Mimi model: only causal"):
        mimi("gemm", use_causal_conv=False)


def test_bfloat16_network_runs_on_the_gemm_path():
    fast, slow = mimi("gemm", dtype="bfloat16"), mimi("transformers", dtype="bfloat16")
    wave = speech_like(3 * 24_000)
    (got,), (ref,) = fast.encode([wave]), slow.encode([wave])
    assert got.shape == ref.shape and (got[0] == ref[0]).mean() > 0.5  # bfloat16 rounding moves codes
