"""Client mistakes as OpenAI-shaped `error` events. The session stays open after every one of them."""

from __future__ import annotations

from bot.realtime.translation_events import ErrorDetail, ErrorEvent


class ProtocolError(Exception):
    """A recoverable problem with one client event; becomes one `error` event."""

    def __init__(
        self,
        code: str,
        message: str,
        param: str | None = None,
        *,
        type: str = "invalid_request_error",
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.type = type
        self.event_id = event_id

    def to_event(self) -> ErrorEvent:
        return ErrorEvent(
            error=ErrorDetail(
                type=self.type,
                code=self.code,
                message=self.message,
                param=self.param,
                event_id=self.event_id,
            )
        )
