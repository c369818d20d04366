# morphbox: two commands on a fresh Debian/Raspberry Pi OS machine.
#   make demo   system packages + .venv + the main job (out/demo.wav, out/demo.png)
#   make test   the same set-up, then the whole test suite
VENV    := .venv
PY      := $(VENV)/bin/python
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PKGS := fluidsynth fluid-soundfont-gm musescore-general-soundfont portaudio19-dev jackd2 \
            libsndfile1 python3-venv \
            chromium chromium-driver
STAMPS  := .make

.PHONY: demo test test-random bench pack lint clean setup arm64-check

demo: setup
	$(VENV)/bin/morphbox demo

test: setup
	$(VENV)/bin/pytest -q -p no:randomly

test-random: setup  # the same suite in a random order (pytest-randomly; the seed is printed)
	$(VENV)/bin/pytest -q -p randomly

bench: setup
	$(PY) bench/engine.py
	$(PY) bench/controls.py
	$(PY) bench/midi_latency.py
	$(PY) bench/flash.py
	$(PY) bench/hostile.py
	$(PY) bench/pack_build.py
	$(PY) bench/decode.py
	$(PY) bench/corner_fidelity.py

pack: setup
	$(VENV)/bin/morphbox pack build --out device/packs/default

# Does it install and run on 64-bit Raspberry Pi OS? setup.sh, a demo render and a 20 s
# sim-profile service in a Debian arm64 bookworm root under qemu (deploy/arm64-check.sh).
# Slow (about 40 min the first time, cached under .cache/arm64/ after): not part of `make test`.
arm64-check:
	$(SUDO) deploy/arm64-check.sh

lint: setup
	$(VENV)/bin/ruff check .

setup: $(STAMPS)/venv

$(STAMPS)/system:
	@mkdir -p $(STAMPS)
	@if dpkg -s $(APT_PKGS) >/dev/null 2>&1; then echo "system packages present"; else \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PKGS); fi
	@touch $@

$(STAMPS)/venv: pyproject.toml $(STAMPS)/system
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[device,host,dev]"
	@touch $@

clean:
	rm -rf $(STAMPS) out .pytest_cache
