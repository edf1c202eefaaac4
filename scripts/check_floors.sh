#!/usr/bin/env bash
# Install the LOWEST versions that pyproject.toml allows for every direct dependency (uv's
# --resolution lowest-direct) into a fresh virtual environment, and run the fast tests there:
# the floors in pyproject.toml are only true if this passes.
#   bash scripts/check_floors.sh [VENV_DIR]        (default .venv-floors; about 10 minutes on 2 cores)
# torch is the one exception: its floor is the CPU build this project is tested with (PyPI's Linux
# wheels of older releases are CUDA builds of several GB); it is installed first, with pip, as in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-floors}
python3 -m pip install -q uv
rm -rf "$VENV"
python3 -m uv venv -q --python "$(command -v python3)" "$VENV"
PY="$VENV/bin/python"
"$PY" -m ensurepip -q 2>/dev/null || python3 -m uv pip install -q --python "$PY" pip
TORCH_FLOOR=$(python3 -c "import re,tomllib;d=tomllib.load(open('pyproject.toml','rb'))['project']['dependencies'];print(next(re.sub(r'^torch>=','',x) for x in d if x.startswith('torch>=')))")
"$PY" -m pip install -q "torch==$TORCH_FLOOR"
python3 -m uv pip install -q --python "$PY" --resolution lowest-direct -e ".[dev]"
echo "lowest allowed versions installed:"
"$PY" -m pip list 2>/dev/null | grep -iE "^(torch|transformers|tokenizers|faiss-cpu|ray|optuna|pyyaml|numpy|pillow|pandas|pyarrow|matplotlib|tqdm|pytest|moto) "
"$PY" -m pytest -q -m "not slow" -p no:cacheprovider
