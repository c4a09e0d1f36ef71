"""Audio input: mono float32 segments read from files, resampled, and bad clips rejected with a reason."""

import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from megatron_soda.codec import audio_io
from megatron_soda.codec.audio_io import AudioRejected, check_waveform, load_audio, resample

RATE = 24_000


def ramp(n):
    """Samples that identify their own position, to check exactly which frames were read."""
    return (np.arange(n, dtype=np.float32) / n - 0.5).astype(np.float32)


def write(path, data, rate=RATE, subtype="FLOAT"):
    sf.write(str(path), data, rate, subtype=subtype)
    return path


def rejected(reason, fn, *args, **kwargs):
    with pytest.raises(AudioRejected) as info:
        fn(*args, **kwargs)
    assert info.value.reason == reason, str(info.value)
    return str(info.value)


def test_multichannel_file_is_averaged_to_mono(tmp_path):
    stereo = np.stack([np.full(1000, 0.5), np.full(1000, -0.1)], axis=1).astype(np.float32)
    wave, rate = load_audio(write(tmp_path / "stereo.wav", stereo, rate=16_000))
    assert rate == 16_000 and wave.shape == (1000,) and wave.dtype == np.float32
    np.testing.assert_allclose(wave, 0.2, atol=1e-6)


def test_mono_file_is_read_unchanged(tmp_path):
    x = ramp(4800)
    wave, rate = load_audio(write(tmp_path / "mono.flac", x, subtype="PCM_24"))
    assert rate == RATE
    np.testing.assert_allclose(wave, x, atol=1e-6)


def test_segment_returns_exactly_the_frames_from_start_to_end(tmp_path):
    x = ramp(RATE)
    path = write(tmp_path / "ramp.wav", x)
    np.testing.assert_array_equal(load_audio(path, start=0.5, end=0.75)[0], x[12_000:18_000])
    np.testing.assert_array_equal(load_audio(path, start=0.25)[0], x[6_000:])
    np.testing.assert_array_equal(load_audio(path, end=0.1)[0], x[:2_400])


def test_segment_is_read_by_seeking_not_by_reading_the_whole_file(tmp_path, monkeypatch):
    path = write(tmp_path / "long.wav", ramp(10 * RATE))
    calls = []
    seek, read = sf.SoundFile.seek, sf.SoundFile.read

    def spy_seek(self, frames, *args):
        calls.append(("seek", frames))
        return seek(self, frames, *args)

    def spy_read(self, frames=-1, **kwargs):
        calls.append(("read", frames))
        return read(self, frames, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "seek", spy_seek)
    monkeypatch.setattr(sf.SoundFile, "read", spy_read)
    load_audio(path, start=9.0, end=9.5)
    assert calls[0] == ("seek", 9 * RATE)  # soundfile's read seeks relative to here itself
    assert [frames for call, frames in calls if call == "read"] == [RATE // 2]


def test_segment_may_end_a_rounding_error_past_the_file_but_not_more(tmp_path):
    path = write(tmp_path / "one_second.wav", ramp(RATE))
    assert len(load_audio(path, start=0.5, end=1.01)[0]) == RATE // 2
    assert "holds 1 s" in rejected("unreadable", load_audio, path, start=0.5, end=1.5)


@pytest.mark.parametrize("end", [3.0, None])
def test_segment_starting_after_the_end_of_the_file_is_unreadable(tmp_path, end):
    path = write(tmp_path / "one_second.wav", ramp(RATE))
    rejected("unreadable", load_audio, path, start=2.0, end=end)


@pytest.mark.parametrize("start, end", [(-1.0, 1.0), (0.5, 0.5), (0.5, 0.2)])
def test_invalid_segment_bounds_are_a_caller_error(tmp_path, start, end):
    path = write(tmp_path / "a.wav", ramp(RATE))
    with pytest.raises(ValueError, match="invalid segment"):
        load_audio(path, start=start, end=end)


def test_resampling_22050_to_24000_keeps_duration_and_pitch():
    t = np.arange(22_050) / 22_050
    wave = resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), 22_050, 24_000)
    assert wave.shape == (24_000,) and wave.dtype == np.float32
    expected = np.sin(2 * np.pi * 440 * np.arange(24_000) / 24_000)
    assert np.abs(wave[1000:-1000] - expected[1000:-1000]).max() < 1e-2  # edges ring from the filter
    assert len(resample(np.zeros(12_345, np.float32), 22_050, 24_000)) == round(12_345 * 24_000 / 22_050)


def test_resampling_to_the_same_rate_is_the_identity():
    x = ramp(1000)
    np.testing.assert_array_equal(resample(x, RATE, RATE), x)


def test_random_bytes_are_unreadable_and_the_message_names_the_file(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert str(path) in rejected("unreadable", load_audio, path)


def test_missing_file_is_unreadable(tmp_path):
    rejected("unreadable", load_audio, tmp_path / "absent.wav")


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_wav_cut_short_of_its_header_is_unreadable(tmp_path, subtype):
    data = write(tmp_path / "full.wav", ramp(RATE), subtype=subtype).read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in rejected("unreadable", load_audio, path)


def test_wav_cut_inside_its_header_is_unreadable(tmp_path):
    data = write(tmp_path / "full.wav", ramp(RATE)).read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(data[:30])
    rejected("unreadable", load_audio, path)


def test_truncated_flac_is_unreadable(tmp_path):
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, RATE).astype(np.float32)
    data = write(tmp_path / "full.flac", noise, subtype="PCM_16").read_bytes()
    path = tmp_path / "cut.flac"
    path.write_bytes(data[: len(data) // 2])
    rejected("unreadable", load_audio, path)


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile has no MP3 support")
def test_truncated_mp3_whose_header_promises_more_frames_is_unreadable(tmp_path):
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, RATE).astype(np.float32)
    data = write(tmp_path / "full.mp3", noise, subtype="MPEG_LAYER_III").read_bytes()
    path = tmp_path / "cut.mp3"
    path.write_bytes(data[: len(data) // 2])
    assert "decoding stopped" in rejected("unreadable", load_audio, path)


def test_streamed_wav_with_unknown_data_size_is_read_whole(tmp_path):
    data = bytearray(write(tmp_path / "full.wav", ramp(RATE), subtype="PCM_16").read_bytes())
    assert data[36:40] == b"data"
    data[4:8] = data[40:44] = struct.pack("<I", 0xFFFFFFFF)  # what a writer to a pipe leaves
    path = tmp_path / "streamed.wav"
    path.write_bytes(bytes(data))
    assert len(load_audio(path)[0]) == RATE


def test_empty_wav_is_rejected_as_empty(tmp_path):
    wave, rate = load_audio(write(tmp_path / "empty.wav", np.zeros(0, np.float32)))
    assert len(wave) == 0
    rejected("empty", check_waveform, wave, rate, "empty.wav")


def test_wav_holding_nan_is_rejected_as_non_finite(tmp_path):
    x = ramp(RATE)
    x[100] = np.nan
    wave, rate = load_audio(write(tmp_path / "nan.wav", x, subtype="FLOAT"))
    assert "1 NaN" in rejected("non_finite", check_waveform, wave, rate, "nan.wav")


def test_too_short_and_too_long_clips_are_rejected(tmp_path):
    short, rate = load_audio(write(tmp_path / "short.wav", ramp(RATE // 20)))
    assert "short.wav" in rejected("too_short", check_waveform, short, rate, tmp_path / "short.wav")
    long, rate = load_audio(write(tmp_path / "long.wav", ramp(2 * RATE)))
    rejected("too_long", check_waveform, long, rate, "long.wav", max_seconds=1.0)
    check_waveform(long, rate, "long.wav", min_seconds=1.0, max_seconds=2.0)  # bounds are inclusive


def test_reject_reasons_are_a_closed_set():
    assert audio_io.REASONS == ("unreadable", "empty", "non_finite", "too_short", "too_long")
    with pytest.raises(ValueError, match="unknown reject reason"):
        AudioRejected("bad_vibes", "x")


def test_audio_input_does_not_import_torch():
    code = "import sys, megatron_soda.codec.audio_io, megatron_soda.codec; assert 'torch' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
