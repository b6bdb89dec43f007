"""Realtime translation sessions: wire models of both OpenAI protocols and the websocket client."""
