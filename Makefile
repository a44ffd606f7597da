# Two commands on a fresh machine:
#   make demo   set up .venv and train + evaluate a CNN on Fashion-MNIST
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
EXTRAS ?= test

.PHONY: demo test install dataset bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-* && touch $@

dataset:
	@bash scripts/ensure-fashion-mnist.sh

demo: install dataset
	$(BIN)/cnnlab train --data fashion-mnist --model simple --epochs 3 --augment standard --out runs/demo

test: install dataset
	$(BIN)/python -m pytest -q

bench: install dataset
	$(BIN)/python bench/bench_loader.py

clean:
	rm -rf $(VENV) runs .pytest_cache
