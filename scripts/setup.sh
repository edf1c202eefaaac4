#!/usr/bin/env bash
# Install ccr into the active Python environment, with the torch build that fits the machine.
#
#   bash scripts/setup.sh          # ccr and what it needs to run
#   bash scripts/setup.sh dev      # ... and what the tests need (any extras of pyproject.toml: dev,cluster)
#
# Why a script: PyPI's torch for Linux is a CUDA build (several GB, minutes to install) even on a
# laptop without a GPU. On Linux without an NVIDIA driver this installs torch's CPU build from
# PyTorch's own index; where that index cannot be reached (an offline mirror) it falls back to the
# configured indexes. A torch that is already installed is kept. Override with CCR_TORCH=<version>
# or CCR_TORCH_INDEX=<url> (e.g. https://download.pytorch.org/whl/cu128 for a given CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=${CCR_TORCH:-2.13.0}  # the version ccr's figures were made with (docs/benchmarks.md)
CPU_INDEX=https://download.pytorch.org/whl/cpu
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

reachable() {  # one quick look, so an offline machine does not wait on pip's retries
  "$PY" - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=5)
EOF
}

if "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif [ -n "${CCR_TORCH_INDEX:-}" ]; then
  echo "setup: torch $TORCH from $CCR_TORCH_INDEX"
  pip_install "torch==$TORCH" --extra-index-url "$CCR_TORCH_INDEX"
elif [ "$(uname -s)" = Linux ] && ! nvidia-smi -L >/dev/null 2>&1; then
  if reachable "$CPU_INDEX/torch/"; then
    echo "setup: no NVIDIA GPU: torch $TORCH, CPU build, from $CPU_INDEX"
    pip_install "torch==$TORCH" --extra-index-url "$CPU_INDEX"
  else
    echo "setup: no NVIDIA GPU and $CPU_INDEX unreachable: torch $TORCH from the configured indexes"
    pip_install "torch==$TORCH"
  fi
else
  echo "setup: torch $TORCH from PyPI (CUDA build on Linux with a GPU; CPU build on macOS and Windows)"
  pip_install "torch==$TORCH"
fi

extras=${1:-}
pip_install -e ".${extras:+[$extras]}"
echo "setup: ccr installed ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
