"""Discord command cogs: thin layers that parse, check permissions and call bot/pipeline."""
