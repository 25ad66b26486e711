# The two commands a newcomer needs: `make up` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test lint typecheck check clean

$(STAMP): pyproject.toml rtc/_fanout.c | build-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The forwarder's C fan-out (rtc/_fanout.c) is built by pip: it needs a C compiler and the
# interpreter's headers (Debian: gcc, python3-dev), installed with apt-get when missing.
# Without them the package still installs (the forwarder runs its Python path) and
# tests/test_fanout_c.py fails, saying the extension is not built.
.PHONY: build-deps
build-deps:
	@if ! command -v cc >/dev/null || [ ! -f "$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then \
	  echo "installing gcc and python3-dev with apt-get (the forwarder's C fan-out)"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  { $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	      gcc libc6-dev python3-dev; } || echo "gcc/python3-dev could not be installed"; \
	fi

up: $(STAMP)
	$(BIN)/stagecast up

test: $(STAMP) browser-deps gstreamer-deps compose-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .stagecast .pytest_cache .mypy_cache .ruff_cache

# Browser tests (tests/test_browser.py, tests/test_firefox.py): the Debian Chromium and
# Firefox ESR (installed with apt-get when missing; CI runs as root), npm playwright-core,
# which drives Chromium, and npm puppeteer-core, which drives Firefox over WebDriver BiDi
# (neither downloads a browser).
.PHONY: browser-deps demo-png
CHROMIUM ?= /usr/bin/chromium
FIREFOX ?= /usr/bin/firefox-esr
BROWSER_DIR := tests/browser
PLAYWRIGHT := $(BROWSER_DIR)/node_modules/playwright-core/package.json

browser-deps: $(PLAYWRIGHT)
	@if [ ! -x "$(CHROMIUM)" ] || [ ! -x "$(FIREFOX)" ] || ! command -v unshare >/dev/null || \
	    ! PATH="$$PATH:/usr/sbin:/sbin" command -v ip >/dev/null; then \
	  echo "installing chromium, firefox-esr, util-linux and iproute2 with apt-get"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    chromium firefox-esr util-linux iproute2 fonts-dejavu-core; \
	fi
	@test -x "$(CHROMIUM)" || { echo "Chromium is still missing at $(CHROMIUM)"; exit 1; }
	@test -x "$(FIREFOX)" || echo "Firefox ESR is still missing at $(FIREFOX): tests/test_firefox.py will skip"

# WHIP interop test (tests/test_whip_gstreamer.py): GStreamer's webrtcbin, driven from
# Debian's python3 (python3-gi is not in the venv). Installed with apt-get when missing;
# the test skips, saying why, only if that fails.
.PHONY: gstreamer-deps
GST_PACKAGES := gstreamer1.0-plugins-bad gstreamer1.0-nice gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-base python3-gi gir1.2-gst-plugins-bad-1.0

gstreamer-deps:
	@if ! /usr/bin/python3 tests/gstreamer/whip_publish.py --check >/dev/null 2>&1; then \
	  echo "installing GStreamer WebRTC with apt-get"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  { $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	      $(GST_PACKAGES); } || echo "GStreamer could not be installed: its WHIP test will skip"; \
	fi

# compose.yaml check (tests/test_compose.py): Debian's docker-compose 1.29 validates it with
# `config -q`, no Docker engine needed. Installed with apt-get when missing; the test skips,
# saying why, only if that fails.
.PHONY: compose-deps
compose-deps:
	@if ! command -v docker-compose >/dev/null; then \
	  echo "installing docker-compose with apt-get (compose.yaml validation)"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  { $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	      docker-compose; } || echo "docker-compose could not be installed: its test will skip"; \
	fi

$(PLAYWRIGHT): $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node.js >= 20) is needed for the browser tests"; exit 1; }
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Regenerate docs/demo.png: the demo page with two speakers' live video.
demo-png: $(STAMP) browser-deps
	STAGECAST_UPDATE_DEMO_PNG=1 $(BIN)/python -m pytest -q tests/test_browser.py -k demo_screenshot
