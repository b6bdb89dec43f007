"""Reading and writing audio files for the command line: any format, rate and channel count in,
24 kHz mono pcm16 out.

Input goes through libsndfile (`soundfile`): WAV of any sample format (8/16/24/32-bit integer,
32/64-bit float, WAVE_FORMAT_EXTENSIBLE as sox writes it), FLAC, OGG/Vorbis/Opus, AIFF, and MP3 where
the installed libsndfile has it. soxr does the resampling. A 24 kHz mono pcm16 file is read as
integers and passed through bit-exact. Every problem is an `AudioFileError` whose message a user can
act on. Output is written as it arrives (`WavWriter`), so an interrupted run keeps what it had.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr

from bot.audio.pcm import to_pcm16

RATE = 24_000


class AudioFileError(Exception):
    pass


def _convert_hint() -> str:
    return "convert it, e.g. `sox IN -b 16 OUT.wav`"


def read_audio_24k_mono(path: str | Path) -> bytes:
    """The file's audio as pcm16 mono 24 kHz little-endian (b"" for a file with no samples)."""
    import soundfile as sf

    p = Path(path)
    if p.is_dir():
        raise AudioFileError(f"{p}: is a directory, not an audio file")
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise AudioFileError(f"{p}: no such file") from None
    except OSError as e:
        raise AudioFileError(f"{p}: cannot read ({e.strerror or e})") from None
    if size == 0:
        raise AudioFileError(f"{p}: the file is empty (0 bytes)")
    try:
        with sf.SoundFile(str(p)) as f:
            rate, channels, subtype = f.samplerate, f.channels, f.subtype
            if rate == RATE and channels == 1 and subtype == "PCM_16":
                return f.read(dtype="int16").astype("<i2", copy=False).tobytes()  # bit-exact
            x = f.read(dtype="float32", always_2d=True)
    except PermissionError:
        raise AudioFileError(f"{p}: permission denied") from None
    except (sf.LibsndfileError, RuntimeError, EOFError) as e:
        # libsndfile says "does not exist or is not a regular file" for any format it does not know
        reason = str(e).split(": ", 1)[-1].rstrip(".") if str(e) else type(e).__name__
        detail = "" if "does not exist" in reason else f" ({reason})"
        raise AudioFileError(
            f"{p}: not an audio file that can be read{detail}: WAV, FLAC, OGG, MP3 and AIFF are; {_convert_hint()}"
        ) from None
    if x.size == 0:
        return b""
    mono = x.mean(axis=1, dtype=np.float32) if channels > 1 else x[:, 0]
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE, quality="HQ")
    return to_pcm16(mono)


read_wav_24k_mono = read_audio_24k_mono  # the name bot.demo and bot.sandbox use


class WavWriter:
    """A 24 kHz mono pcm16 WAV written as audio arrives; `close()` finalises the header.

    Opened before any work, so a path that cannot be written fails first, and an interrupted run
    still leaves a valid file with everything received so far.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file = self.path.open("wb")  # opened here (not by wave) so a failure leaves nothing behind
        except FileNotFoundError:
            raise AudioFileError(f"{self.path}: its folder {self.path.parent} does not exist") from None
        except IsADirectoryError:
            raise AudioFileError(f"{self.path}: is a directory") from None
        except OSError as e:
            raise AudioFileError(f"{self.path}: cannot write ({e.strerror or e})") from None
        self._w = wave.open(self._file, "wb")  # noqa: SIM115 - closed by close()
        self._w.setnchannels(1)
        self._w.setsampwidth(2)
        self._w.setframerate(RATE)
        self.bytes = 0

    def write(self, pcm16: bytes) -> None:
        self._w.writeframes(pcm16)
        self.bytes += len(pcm16)

    def close(self) -> None:
        try:
            self._w.close()  # patches the header with the final length
        finally:
            self._file.close()

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_wav_24k_mono(path: str | Path, pcm16: bytes) -> None:
    with WavWriter(path) as w:
        w.write(pcm16)
