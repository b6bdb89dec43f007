"""The bot tells bot.localrt what it knows about a speaker's language, and nothing it cannot serve.

A real `RoomManager` (real SQLite store) against a real multilingual server: `/translate language speaks:`
becomes `input_language=` on the speaker's session URL (no identification), the guild's spoken languages become
`languages=` candidates for members who did not say, and a spoken language the server says it cannot translate
from is refused before anything is stored.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import resolve_endpoint
from bot.localrt.server import LocalRTServer
from bot.pipeline.rooms import RoomManager
from bot.pipeline.service import LanguageRefused
from bot.store import Store
from tests.localrt.conftest import API_KEY
from tests.localrt.test_translation_session import local_settings

G = 7


async def test_speaks_and_candidates_reach_the_server_and_unheard_languages_are_refused(
    base_engines, tmp_path: Path
) -> None:
    config = base_engines.config.model_copy(update={"port": 0})
    async with LocalRTServer(config, base_engines, api_key=API_KEY) as server, \
            await Store.open(tmp_path / "p.sqlite3") as store:
        settings = local_settings(server)
        rooms = RoomManager(settings, store, resolve_endpoint(settings), join_voice=None)  # type: ignore[arg-type]
        heard = await rooms.spoken_languages()
        assert heard is not None and {"en", "es", "fr", "pt"} <= heard
        await rooms.check_spoken("pt-BR")  # a region of a language it hears
        with pytest.raises(LanguageRefused, match="can't translate from `ja` speech"):
            await rooms.check_spoken("ja")  # whisper hears Japanese, but no route translates from it

        await store.set_speaks(G, 1, "es")
        async with rooms.lease(G, 1, "en"):
            (session,) = server.sessions
            assert (session.spoken.spoken, session.spoken.candidates) == ("es", frozenset())
        # one declared language is no choice: nothing is sent, the server chooses among all it can translate
        async with rooms.lease(G, 2, "es"):
            (session,) = server.sessions
            assert (session.spoken.spoken, session.spoken.candidates) == (None, frozenset())
        await store.set_speaks(G, 3, "fr")
        await store.set_speaks(G, 4, "ja")  # heard by no route: never a candidate
        async with rooms.lease(G, 2, "es"):
            (session,) = server.sessions
            assert (session.spoken.spoken, session.spoken.candidates) == (None, frozenset({"es", "fr"}))
        await rooms.close()
