"""Audio input through libsndfile (issue 10): the formats sox and editors write, and clear messages."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from bot.audiofile import AudioFileError, WavWriter, read_audio_24k_mono

needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="needs sox")


def test_24k_mono_pcm16_passes_bit_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    samples = np.concatenate([[-32768, 32767, -1, 0, 1], rng.integers(-32768, 32768, 24_000)]).astype("<i2")
    src = tmp_path / "in.wav"
    with wave.open(str(src), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(24_000)
        w.writeframes(samples.tobytes())
    assert read_audio_24k_mono(src) == samples.tobytes()


def _tone(tmp_path: Path) -> Path:
    src = tmp_path / "tone.wav"
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(src), "synth", "1", "sine", "440",
                    "gain", "-6"], check=True)
    return src


@needs_sox
@pytest.mark.parametrize("suffix,options", [
    (".wav", ["-b", "24"]),  # sox writes WAVE_FORMAT_EXTENSIBLE (65534)
    (".wav", ["-e", "floating-point", "-b", "32"]),  # WAVE_FORMAT_IEEE_FLOAT (3)
    (".flac", []),
    (".ogg", []),
])
def test_formats_sox_writes_are_read(tmp_path: Path, suffix: str, options: list[str]) -> None:
    src = tmp_path / f"converted{suffix}"
    subprocess.run(["sox", str(_tone(tmp_path)), *options, str(src)], check=True)
    pcm = np.frombuffer(read_audio_24k_mono(src), "<i2").astype(float)
    assert len(pcm) == pytest.approx(24_000, abs=100)
    spectrum = np.abs(np.fft.rfft(pcm))
    assert np.argmax(spectrum) * 24_000 / len(pcm) == pytest.approx(440, abs=2)
    assert np.abs(pcm).max() == pytest.approx(0.5 * 32768, rel=0.05)


def test_an_empty_file_a_directory_and_a_missing_file_are_clear(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioFileError, match=r"empty\.wav: the file is empty \(0 bytes\)"):
        read_audio_24k_mono(empty)
    with pytest.raises(AudioFileError, match="is a directory"):
        read_audio_24k_mono(tmp_path)
    with pytest.raises(AudioFileError, match="no such file"):
        read_audio_24k_mono(tmp_path / "nope.wav")
    garbage = tmp_path / "song.mp3"
    garbage.write_bytes(b"ID3\x03\x00\x00\x00garbage")
    with pytest.raises(AudioFileError, match="not an audio file that can be read") as e:
        read_audio_24k_mono(garbage)
    assert "does not exist" not in str(e.value)  # libsndfile's wording for "unknown format" is not passed on


def test_a_header_only_wav_has_no_samples(tmp_path: Path) -> None:
    src = tmp_path / "header.wav"
    with wave.open(str(src), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(8000)
    assert read_audio_24k_mono(src) == b""


def test_the_writer_leaves_a_valid_wav_with_what_it_was_given(tmp_path: Path) -> None:
    out = tmp_path / "o.wav"
    w = WavWriter(out)
    w.write(b"\x01\x00" * 480)
    w.close()
    with wave.open(str(out)) as r:
        assert (r.getframerate(), r.getnchannels(), r.getnframes()) == (24_000, 1, 480)
    with pytest.raises(AudioFileError, match="does not exist"):
        WavWriter(tmp_path / "nodir" / "o.wav")


def test_mp3_where_libsndfile_has_it(tmp_path: Path) -> None:
    import soundfile as sf

    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MPEG support")
    src = tmp_path / "tone.mp3"
    sf.write(str(src), 0.3 * np.sin(2 * np.pi * 440 * np.arange(44_100) / 44_100), 44_100, format="MP3")
    pcm = np.frombuffer(read_audio_24k_mono(src), "<i2").astype(float)
    assert len(pcm) == pytest.approx(24_000, abs=1200)  # MP3 adds encoder padding
    assert np.argmax(np.abs(np.fft.rfft(pcm))) * 24_000 / len(pcm) == pytest.approx(440, abs=3)
