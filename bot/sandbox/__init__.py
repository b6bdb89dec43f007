"""A local Discord on 127.0.0.1 for the demo and whole-process tests (REST v10, gateway, voice + DAVE, SFU).

Nothing in the bot knows about it: the bot reaches it through `discord.api_base`, `discord.gateway_url` and
`discord.ca_file`, the settings that also serve users of Discord-compatible servers.
"""
