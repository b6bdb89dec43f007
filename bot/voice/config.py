"""Voice receive settings (mounted by the lead as the ``voice:`` section of the global Settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class VoiceConfig(BaseModel):
    """Knobs for receiving members' speech from a Discord voice connection."""

    model_config = ConfigDict(extra="forbid")

    jitter_depth: int = Field(
        default=3,
        ge=0,
        le=50,
        description="Packets a speaker's buffer may hold while waiting for a missing one (3 = 60 ms). "
        "In-order packets are never delayed; 0 disables reordering.",
    )
    max_conceal_frames: int = Field(
        default=5,
        ge=0,
        le=50,
        description="Longest gap (20 ms frames) filled by FEC/PLC; a longer gap restarts the stream.",
    )
    unmapped_hold_packets: int = Field(
        default=200,
        ge=0,
        description="Packets held in total for SSRCs not yet mapped to a member (op 5 arriving late).",
    )
    unmapped_hold_seconds: float = Field(
        default=2.0, gt=0, description="How long a packet from an unmapped SSRC is held before it is dropped."
    )
    stream_timeout: float = Field(
        default=0.5,
        gt=0,
        description="Seconds without packets after which a speaker's stream ends (when Discord's "
        "silence frames were lost).",
    )
    capture: bool = Field(default=False, description="Write raw voice datagrams to a capture file (JSONL).")
    capture_dir: Path = Field(
        default=Path("captures"), description="Directory for capture files (one per voice connection)."
    )
    frame_queue_size: int = Field(
        default=2000,
        ge=1,
        description="20 ms frames buffered for the asyncio consumer before new ones are dropped (40 s).",
    )
