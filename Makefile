# mixstudio: set-up, main job, tests. Everything installs into .venv/ from requirements.lock.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK_HASH := $(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.mixstudio-$(LOCK_HASH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install demo test test-slow test-all lint format clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -r requirements.lock
	rm -f $(VENV)/.mixstudio-*
	touch $@

# The editable install points at this checkout; it is redone when the venv is shared from a cache.
install: $(STAMP)
	@test -x $(VENV)/bin/mixstudio && $(PY) -P -c "import studio, pathlib, sys; \
		sys.exit(pathlib.Path(studio.__file__).parent != pathlib.Path('studio').resolve())" 2>/dev/null \
		|| $(PY) -m pip install -q --no-deps --no-build-isolation -e .

# The main job on the embedded default: text-to-image and text-to-music with the shipped base models, then a
# guidance sweep over the held-out prompts scored by the eval judges (tables, sweep.png).
demo: install
	$(VENV)/bin/mixstudio generate image "a red circle in the centre" -n 4 --steps 25 --guidance 2 --seed 0 --out out/demo/image
	$(VENV)/bin/mixstudio generate music "a fast minor tune with drums" -n 2 --steps 25 --guidance 4 --seed 0 --out out/demo/music
	$(VENV)/bin/mixstudio sweep image --model shapes --guidance 1 2 -n 2 --out out/demo/shapes-sweep
	$(VENV)/bin/mixstudio sweep music --model synth --guidance 1 4 -n 2 --out out/demo/synth-sweep

test: install
	$(PY) -m pytest -q

# The tests marked slow only (learning curves, two-process training, Pareto runs): CI runs them after `make test`.
test-slow: install
	$(PY) -m pytest -q --runslow -m slow

test-all: install
	$(PY) -m pytest -q --runslow

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf out .pytest_cache .ruff_cache
