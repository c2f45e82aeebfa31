"""The wheels ``make gpu-check WHEELS=DIR`` needs on the lent GPU machine, fetched here:
``make gpu-wheels WHEELS=DIR``.

That machine has no network and its own image (Python 3.12, x86_64, torch, triton,
transformers and ~200 other packages), but not everything edgechat imports: without
llguidance (engine/structured/), av (engine/multimodal/video.py), fastapi, pydantic, ...
``import engine`` fails, and with it every test. This takes the dependency closure of
edgechat and the test suite's own needs from this venv's installed metadata, drops what
the image has, and downloads the rest at the versions installed here (so the GPU run
tests what CI tests) as binary wheels for the machine's Python and platform, and builds
the benchmark peers' wheels (PEERS).

    python benchmarks/gpu_wheels.py --dest DIR [--python-version 3.12]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

# What the tests import beyond the runtime dependencies (pyproject's dev extra also holds
# linters and the browser driver, which the GPU run does not use).
TEST_NEEDS = ["pytest", "pytest-timeout", "httpx", "gguf", "jsonschema"]

# Peers that bench_kernels times when they import, not edgechat dependencies (so not
# installed here). gemlite publishes only an sdist: it is built here into a pure-Python
# wheel; it needs numpy, tqdm and triton >= 3.6, all the image's (read 2026-12-03).
PEERS = ["gemlite==0.6.0.post2"]

# The GPU machine's image ('cuda'), as /work/.library/device/KINDS.md listed it (read on
# 2026-11-17; huggingface-hub from its pip list). torch and triton are the machine's own
# and never carried, nor is anything the image's packages need. A word list, as listed.
_IMAGE_PACKAGES = """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub
    humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
    jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
    lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
    markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
    multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy
    numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
    nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
    nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
    nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
    packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
    propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
    pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
    pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
    safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
    sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
    sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
    tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
    torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
    urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""
IMAGE_HAS = frozenset(_IMAGE_PACKAGES.split())
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def carried(roots: list[str], python_version: str) -> dict[str, str]:
    """name -> version installed here, for ``roots`` and all they require on the target
    (Linux x86_64, ``python_version``), but for what the image has (with what it needs)."""
    environment = default_environment() | {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "platform_machine": "x86_64",
        "sys_platform": "linux",
    }
    found: dict[str, str] = {}
    todo = [Requirement(root) for root in roots]
    while todo:
        requirement = todo.pop()
        name = canonical(requirement.name)
        if name in found or name in IMAGE_HAS:
            continue
        try:
            found[name] = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{requirement.name} is needed on the GPU machine but not installed here")
        for line in metadata.requires(requirement.name) or []:
            needed = Requirement(line)
            extras = requirement.extras or {""}
            if needed.marker is None or any(
                needed.marker.evaluate(environment | {"extra": extra}) for extra in extras
            ):
                todo.append(needed)
    return found


def runtime_roots() -> list[str]:
    """edgechat's own dependencies, as its installed metadata declares them."""
    return [
        line.split(";")[0] for line in metadata.requires("edgechat") or [] if "extra ==" not in line
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    args = parser.parse_args()
    wheels = carried([*runtime_roots(), *TEST_NEEDS], args.python_version)
    args.dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        + ["--python-version", args.python_version, "--implementation", "cp", *platforms]
        + ["--dest", str(args.dest), *(f"{name}=={version}" for name, version in wheels.items())],
        check=True,
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
        + ["--wheel-dir", str(args.dest), *PEERS],
        check=True,
    )
    size = sum(path.stat().st_size for path in args.dest.glob("*.whl"))
    names = [*wheels, *PEERS]
    print(f"{len(names)} wheels in {args.dest} ({size / 2**20:.1f} MiB): {', '.join(names)}")


if __name__ == "__main__":
    main()
