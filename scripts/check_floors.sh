#!/usr/bin/env bash
# Install the LOWEST versions that pyproject.toml allows for every direct dependency (uv's
# --resolution lowest-direct) into a fresh virtual environment, and run the fast tests there:
# the floors in pyproject.toml are only true if this passes.
#   bash scripts/check_floors.sh [VENV_DIR [PYTEST_ARGS...]]   (default .venv-floors; about 5 minutes on 2 cores)
# Pass `-m ""` as PYTEST_ARGS to run the slow tests too (Ray Train, Tune, shards: the Ray floor).
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
# uv may still settle on a newer release of a package that something else also requires: pin every
# direct dependency to its floor explicitly, so the versions tested are the floors themselves
FLOORS=$("$PY" - <<'PY'
import re, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = p["dependencies"] + p["optional-dependencies"]["dev"]
print(" ".join(f"{m[1]}=={m[2]}" for d in deps if not d.startswith("torch") and (m := re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([0-9.]+)", d))))
PY
)
python3 -m uv pip install -q --python "$PY" $FLOORS
echo "installed (each direct dependency at its floor): $FLOORS"
"$PY" -m pip check || echo "(pip check: a conflict above is between a floor and a dev tool's own requirement; the tests decide)"
"$PY" -m pytest -q -m "not slow" -p no:cacheprovider "${@:2}"
