# Fresh machine: `make demo` (install + main job) or `make test` (install + tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup fmnist browser demo demo-dit demo-video test test-reference clean

setup: $(BIN)/elt fmnist browser

# torch is pinned to the CPU wheel (a looser pin pulls a multi-GB CUDA build).
$(BIN)/elt: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "torch-fidelity==0.4.0"  # its Inception module, for the FID agreement test (no torchvision)
	$(BIN)/pip install -q --no-deps "cd-fvd==0.1.1"  # its copy of pytorch-i3d, for the I3D agreement test (its own file only)
	touch $(BIN)/elt

# Fashion-MNIST ships as Debian's dataset-fashion-mnist; install it when missing and apt is usable.
fmnist:
	@if [ ! -f $(FMNIST) ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	      || echo "warning: could not install dataset-fashion-mnist; pass --data-dir with the idx files"; \
	  else echo "note: $(FMNIST) missing and apt unusable; install dataset-fashion-mnist or pass --data-dir"; fi; \
	fi

# The web demo's browser test drives Debian's chromium + chromium-driver; installed when missing and
# apt is usable (elsewhere that one test is skipped and says why).
browser:
	@if ! command -v chromedriver >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	      || echo "warning: could not install chromium; the browser test will be skipped"; \
	  else echo "note: chromium-driver missing and apt unusable; the browser test will be skipped"; fi; \
	fi

# --resume: a second `make demo` reuses the finished run and evaluates it again
demo: setup
	$(BIN)/elt demo --config fmnist-maskgit --out runs/fmnist-maskgit --resume

# the diffusion track's demo (looped DiT in pixel space; ~16 minutes on 2 cores with bf16)
demo-dit: setup
	$(BIN)/elt demo --config fmnist-dit --out runs/fmnist-dit --resume

# the video track's demo (moving Fashion-MNIST, a layered window + motion tokenizer, masked looped transformer; ~18 min)
demo-video: setup
	$(BIN)/elt demo --config mfmnist-video --out runs/mfmnist-video --resume

# The suite runs on every core (pytest-xdist), one torch thread per worker.
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --dist worksteal

# elt's BERT network and MaskGIT VQGAN port against MaskGIT's own JAX code (installs jax and flax:
# ~750 MB, so not part of `make setup`; `make test` skips these checks without them)
test-reference: setup
	$(BIN)/pip install -q -e ".[reference]"
	$(BIN)/python -m pytest -q tests/test_reference.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
