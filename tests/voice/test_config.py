"""VoiceConfig: documented defaults, strict keys, bounds; it is what Settings mounts as ``voice:``."""

import pytest
from pydantic import ValidationError

from bot.voice.config import VoiceConfig


def test_defaults_are_documented_and_sane():
    c = VoiceConfig()
    assert (c.jitter_depth, c.max_conceal_frames, c.unmapped_hold_packets) == (3, 5, 200)
    assert c.stream_timeout == 0.5 and c.unmapped_hold_seconds == 2.0
    assert c.capture is False
    for name, field in VoiceConfig.model_fields.items():
        assert field.description, name


@pytest.mark.parametrize("bad", [{"jiter_depth": 2}, {"jitter_depth": -1}, {"stream_timeout": 0}])
def test_rejects_unknown_keys_and_out_of_range(bad):
    with pytest.raises(ValidationError):
        VoiceConfig(**bad)


def test_mounted_in_global_settings():
    from bot.config import Settings

    assert Settings.model_fields["voice"].annotation is VoiceConfig
