# Parley: `make run` and `make test` each set up what they need on a fresh Debian machine, then run.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.yaml
# Debian packages: libopus for voice, espeak-ng/sox for TTS and test speech, apertium pairs for offline MT:
# 15 of Debian's 46 pairs (74 MB installed), chosen for routes per MB around Spanish and English as hubs
# (107 routes; all 46 pairs: 385 MB, 177 routes). README "Languages" says how to add the rest.
APT_PACKAGES := libopus0 espeak-ng sox apertium apertium-eng-spa apertium-eng-cat apertium-eo-en apertium-spa-cat apertium-fr-es apertium-es-pt apertium-spa-ita apertium-es-ro apertium-eo-es apertium-oc-es apertium-eu-es apertium-spa-arg apertium-hbs-eng apertium-mkd-eng apertium-isl-eng

# npm packages for the discord.js witness in tests/sandbox (Node 24, @discordjs/voice, @snazzah/davey): pinned in
# tests/sandbox/node, installed into .node/ once (npm ci, then a stamp). Without npm that one test is skipped.
NODE_DIR := .node
NODE_PKG := tests/sandbox/node
NPM ?= $(shell command -v npm)

.PHONY: run demo test lint bench system-deps deps node-deps clean

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "warning: missing Debian packages:$$missing (run as root or: sudo apt-get install$$missing)"; fi; \
	fi

$(VENV)/.stamp: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[local,piper,test,dev]'
	touch $@

deps: system-deps $(VENV)/.stamp

ifneq ($(NPM),)
node-deps: $(NODE_DIR)/.stamp
else
node-deps:
	@echo "warning: npm not found: the discord.js witness in tests/sandbox/test_voice_server.py will be skipped (apt-get install npm)"
endif

$(NODE_DIR)/.stamp: $(NODE_PKG)/package.json $(NODE_PKG)/package-lock.json
	mkdir -p $(NODE_DIR)
	cp $(NODE_PKG)/package.json $(NODE_PKG)/package-lock.json $(NODE_DIR)/
	cd $(NODE_DIR) && $(NPM) ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

# Debian packages only the tests need: PostgreSQL's server, which tests/pg.py starts as a throwaway cluster on
# 127.0.0.1 (as the `postgres` user when run as root, as in CI). Under `make test` its tests must run, not skip.
APT_TEST_PACKAGES := postgresql
.PHONY: test-system-deps
test-system-deps:
	@missing=""; for p in $(APT_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages for the tests:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "warning: missing Debian packages for the tests:$$missing (sudo apt-get install$$missing)"; fi; \
	fi
test: test-system-deps
test: export PARLEY_REQUIRE_POSTGRES := 1

test: deps node-deps
	$(BIN)/ruff check bot cogs tests benchmarks
	$(BIN)/python -m pytest -q

lint: deps
	$(BIN)/ruff check bot cogs tests benchmarks

bench: deps
	$(BIN)/python -m bot bench --json bench.json

# With no DISCORD_TOKEN, `make run` shows the demo: a local Discord, the bot, people talking (no account needed).
# With no OPENAI_API_KEY, Parley runs on its own offline server (bot.localrt) on 127.0.0.1.
run: deps
	@if [ -z "$$DISCORD_TOKEN" ]; then \
	  echo "DISCORD_TOKEN is not set: running the demo against a local Discord (python -m bot demo)"; \
	  $(BIN)/python -m bot demo --out demo-out --config $(CONFIG); \
	elif [ -z "$$OPENAI_API_KEY" ]; then \
	  echo "OPENAI_API_KEY is not set: starting bot.localrt (the local: section of $(CONFIG))"; \
	  $(BIN)/python -m bot localrt --config $(CONFIG) & trap "kill $$!" EXIT; \
	  PARLEY_BACKEND=local $(BIN)/python -m bot run --config $(CONFIG); \
	else $(BIN)/python -m bot run --config $(CONFIG); fi

demo: deps
	$(BIN)/python -m bot demo --out demo-out --config $(CONFIG)

clean:
	rm -rf $(VENV) $(NODE_DIR) .pytest_cache .ruff_cache
