# The two commands of the README: `make train` (train on the embedded emoji faces) and `make test`.
# Both create and reuse .venv by themselves. Choose your torch with TORCH=... or TORCH_INDEX_URL=... (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
OUTPUT_DIR ?= outputs/ddpm-emoji-32
TRAIN_ARGS ?=
# What setup installs besides the package: the test tools, the web demo (gradio) and its browser tests (selenium).
EXTRAS ?= test,demo,browser

.PHONY: setup train test lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup_venv.sh
	EXTRAS=$(EXTRAS) bash scripts/setup_venv.sh $(VENV)
	touch $@

train: setup
	$(VENV)/bin/accelerate launch --quiet --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		train_with_accelerate.py --output_dir $(OUTPUT_DIR) $(TRAIN_ARGS)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	bash scripts/ensure_chromium.sh
	$(PY) -m pytest -n auto --dist loadfile

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build dist *.egg-info
