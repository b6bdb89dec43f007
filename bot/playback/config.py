"""Playback settings: the mix the speaker account plays, and the captions (for a ``playback:`` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PlaybackConfig(BaseModel):
    """Knobs for the way back: mixer latency bounds and caption pacing."""

    model_config = ConfigDict(extra="forbid")

    max_backlog_s: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="Translated audio a speaker may have queued; older audio is dropped so the delay stays bounded.",
    )
    max_tempo: float = Field(
        default=1.35,
        ge=1.0,
        le=2.0,
        description="A speaker falling behind (more than a third of max_backlog_s queued) is played faster, up to "
        "this tempo, without changing pitch; only past max_backlog_s is audio dropped. 1.0: never faster.",
    )
    prebuffer_ms: int = Field(
        default=40,
        ge=0,
        le=1000,
        description="Audio a speaker queues before playing starts (or after a stall), so audio arriving "
        "just in time in odd-sized chunks does not stutter.",
    )
    resample_quality: Literal["QQ", "LQ", "MQ", "HQ", "VHQ"] = Field(
        default="HQ", description="soxr quality of the 24 → 48 kHz resampler."
    )
    caption_edit_interval_s: float = Field(
        default=1.5,
        ge=0.2,
        description="A caption message is edited at most this often (Discord rate-limits edits).",
    )
    caption_pause_s: float = Field(
        default=2.0,
        gt=0,
        description="A speaker silent this long ends their caption message; the next words start a new one.",
    )
