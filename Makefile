# axchat: `make run` sets everything up and answers a prompt; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CPU build, from the local wheel store; an unpinned torch pulls a multi-GB CUDA build.
# Only `make test` (and `make mini`) install it: the default engine runs without torch.
TORCH  := torch==2.13.0
# The CPU engine, the default one. No binary wheel on the index: axchat.engine_build
# compiles llama.cpp for this CPU once (about 5-10 minutes on 2 cores), keeps the wheel in
# ~/.cache/axchat/engine, and self-tests it; see README "The engine build". Its version is
# the one pyproject.toml's `llamacpp` extra pins.
# Empty: the default socket, where `axchat ask`, `chat`, `status` and `web` look by themselves.
SOCKET ?=
PROMPT ?= Give me a joke
# Empty: the bundled axchat-mini. Else a catalog name, a directory or a hub id.
MODEL  ?=

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: run test venv dev lint clean stop browser systemd-analyze fortunes haproxy mini tmux peers

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

# Built for this CPU's instruction set without llama.cpp's AMX kernels, then self-tested
# in every weight type; a build that crashes or computes nonsense is replaced by a portable
# one, and if that fails too the install stops here: the daemon never runs on torch instead.
ENGINE_BUILD := pyproject.toml axchat/engine_build.py axchat/doctor/selftest.py axchat/doctor/selftest_child.py
$(BIN)/.llamacpp-installed: $(BIN)/.installed $(ENGINE_BUILD)
	@$(BIN)/python -m axchat.engine_build
	@touch $@

$(BIN)/.torch-installed: $(BIN)/.installed
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[torch]'
	touch $@

$(BIN)/.dev-installed: $(BIN)/.installed $(BIN)/.llamacpp-installed $(BIN)/.torch-installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed $(BIN)/.llamacpp-installed
dev: $(BIN)/.dev-installed

# Make sure a daemon serves MODEL (default: whatever runs, else axchat-mini) on the
# default socket, restarting one that serves another model; then ask it.
run: venv
	@$(BIN)/python -m axchat.devrun start --log .cache/run/daemon.log $(if $(SOCKET),--socket $(SOCKET)) $(if $(MODEL),--model $(MODEL))
	@$(BIN)/axchat ask $(if $(SOCKET),--socket $(SOCKET)) --stats "$(PROMPT)"
	@echo "The daemon keeps running ('make stop' ends it). To use axchat from this shell, first:"
	@echo "  source $(VENV)/bin/activate"
	@echo 'then e.g. axchat ask "Tell me a quote", axchat chat, axchat status (README.md: Quick start).'

# Exit 2 is "no daemon was running": nothing to stop is not a failure here.
stop:
	@$(BIN)/axchat stop $(if $(SOCKET),--socket $(SOCKET)) || [ $$? -eq 2 ]

# The chat page tests drive Debian's chromium; as root, install it when missing.
# Without it (not root, no apt) those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the chat page tests will be skipped"; }


# tests/daemon/test_units.py runs `systemd-analyze verify` on the units; Debian's
# `systemd` package provides it. Installed only when we are root with apt-get, else
# that test skips and says why.
systemd-analyze:
	@if ! command -v systemd-analyze >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's systemd package for systemd-analyze..."; \
	  apt-get install -y -q systemd >/dev/null || echo "could not install systemd; the unit-file test will skip"; \
	fi


# tests/frontends/chat/test_tmux.py drives `axchat chat` in a real terminal; as root,
# install tmux when missing, else that test skips and says why.
tmux:
	@command -v tmux >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get install -y -q tmux >/dev/null; } || echo "tmux not installed: the terminal chat test will be skipped"

# The quote corpus of axchat-mini: Debian's fortunes-min, for `make mini` and the test that
# checks the model's quotes against it (which skips, saying why, without it).
fortunes:
	@test -f /usr/share/games/fortunes/literature || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && apt-get install -y -q fortunes-min >/dev/null; } || echo "fortunes-min not installed: no quote corpus"

# Retrain the bundled demonstration model into axchat/models/axchat-mini: a fresh run of
# 30 epochs (or 60 minutes), then 12 more epochs at a lower learning rate.
mini: SHELL := /bin/bash
mini: .SHELLFLAGS := -o pipefail -c
mini: venv fortunes $(BIN)/.torch-installed
	$(BIN)/pip install -q -e '.[train]'
	nice -n 10 $(BIN)/python training/train_mini.py --out .cache/mini-base 2>&1 | tee training/train_mini.log
	@# A second, gentler pass (lower learning rate) is what made later turns follow the history.
	nice -n 10 $(BIN)/python training/train_mini.py --init .cache/mini-base --lr 1.5e-3 --epochs 12 --minutes 22 \
	  2>&1 | tee -a training/train_mini.log

# tests/deploy/test_haproxy.py runs deploy/haproxy.cfg with Debian's haproxy. Installed
# when we are root with apt-get, else that test skips and says why.
haproxy:
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get install -y -q haproxy >/dev/null; } || echo "haproxy not installed: the load-balancer test will skip"

test: dev browser systemd-analyze fortunes haproxy tmux
	$(BIN)/python -m pytest -q

# axchat web against llama.cpp's own llama-server on the same GGUF, in one interleaved run
# (bench/peers.py; JSON on stdout). Not part of `make test`: the first run compiles
# llama-server from the engine's llama.cpp source (minutes on 2 cores, then cached).
PEERS_MODEL ?= .cache/bench-models/smollm2-135m
peers: dev
	@test -d $(PEERS_MODEL) || $(BIN)/python -m axchat.testing.tiny_model $(PEERS_MODEL) --shape smollm2-135m
	$(BIN)/python bench/peers.py --model $(PEERS_MODEL)

lint: dev
	$(BIN)/pip install -q ruff mypy
	$(BIN)/ruff check axchat tests bench
	$(BIN)/mypy axchat

clean:
	rm -rf $(VENV) .cache .pytest_cache
