"""bot.localrt: a self-hosted server for OpenAI's `/v1/realtime/translations` protocol.

Offline engines (VAD → ASR → MT → TTS) stand in for gpt-realtime-translate: no API key, no cost, no
audio leaving the host. See `server.py` for the wire side and `interpreter.py` for the pipeline.
"""
