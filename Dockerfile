# Parley: `docker build -t parley .` then
#   docker run --rm -e DISCORD_TOKEN -e DISCORD_SPEAKER_TOKEN -e OPENAI_API_KEY parley
FROM python:3.11-slim

# libopus for Discord voice; espeak-ng + apertium pairs for the offline backend (bot.localrt).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopus0 espeak-ng sox apertium apertium-eng-spa apertium-eng-cat \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 parley
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip install --no-cache-dir '.[local]'
COPY config.yaml ./

USER parley
ENV PYTHONUNBUFFERED=1
CMD ["python", "-m", "bot", "run", "--config", "config.yaml"]
