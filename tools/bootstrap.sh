#!/usr/bin/env bash
# Create .venv with Python 3.10 and install driftline from the committed lock (constraints.txt).
# Idempotent: re-installs only when setup.py or constraints.txt changed (stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP="$VENV/.driftline-installed"
want=$(cat setup.py constraints.txt | sha256sum | cut -c1-16)

find_python310() {
  local c
  for c in "${DRIFTLINE_PYTHON:-}" python3.10 \
           "$(pyenv root 2>/dev/null)/versions/3.10"*/bin/python \
           "$HOME/.pyenv/versions/3.10"*/bin/python /usr/bin/python3.10 /usr/local/bin/python3.10; do
    [ -n "$c" ] || continue
    # a pyenv shim exists even when it cannot run; ask it for its version
    if "$c" -c 'import sys, venv; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then
      echo "$c"; return 0
    fi
  done
  return 1
}

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  if ! PY=$(find_python310); then
    echo "error: driftline needs Python 3.10 (TFX 1.16 and its ml-metadata run on 3.10 only here)." >&2
    echo "       Install it, e.g. 'pyenv install 3.10.13' or your OS's python3.10 + python3.10-venv," >&2
    echo "       or point DRIFTLINE_PYTHON at a Python 3.10 interpreter." >&2
    exit 1
  fi
  echo "bootstrap: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
start=$(date +%s)
# uv installs the same lock ~3x faster than pip (parallel unpacking and byte-compiling; a new venv
# here: ~45 s against ~135 s; README, Timings). It is taken from PATH, else pip puts the lock's
# pinned uv into the venv; if that fails, or DRIFTLINE_INSTALLER=pip, pip installs everything.
installer=${DRIFTLINE_INSTALLER:-uv}
UV=""
if [ "$installer" = uv ]; then
  if command -v uv >/dev/null 2>&1; then
    UV=$(command -v uv)
  elif "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt uv >/dev/null 2>&1 \
       && [ -x "$VENV/bin/uv" ]; then
    UV="$VENV/bin/uv"
  else
    echo "bootstrap: uv could not be installed; installing with pip" >&2
  fi
fi
# --compile-bytecode: this environment sets PYTHONDONTWRITEBYTECODE=1, so modules not compiled at
# install would be compiled again by every process that imports them (TF + TFX + Beam + PyFlink:
# ~18 s more per process). uv reads PyPI (or UV_INDEX_URL), not pip's configuration: where it
# cannot install, pip does.
[ -z "$UV" ] || echo "bootstrap: installing driftline from constraints.txt with uv"
if [ -n "$UV" ] && "$UV" pip install -q --python "$VENV/bin/python" --compile-bytecode -c constraints.txt \
        pip wheel "setuptools<82" -e '.[dev]'; then
  :
else
  [ -z "$UV" ] || echo "bootstrap: uv failed; installing with pip" >&2
  echo "bootstrap: installing driftline from constraints.txt with pip (first time takes a few minutes)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip wheel "setuptools<82"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
fi
"$VENV/bin/python" -m pip check
echo "$want" > "$STAMP"
echo "bootstrap: done in $(( $(date +%s) - start ))s"
