#!/usr/bin/env bash
# Sets up everything tf_gamma_prune needs on a fresh Debian/Ubuntu-like machine:
#   - Debian's dataset-fashion-mnist package (real Fashion-MNIST, offline), where apt is usable;
#   - .venv/ at the repo root with the package (editable) and its dev + litert + tfmot extras
#     (tfmot: tensorflow-model-optimization + tf-keras, for tf_gamma_prune.qat and tests/test_qat.py).
# Idempotent and quick on a second run (the install is skipped while pyproject.toml is unchanged).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo -n"; fi
    echo "setup: installing Debian package dataset-fashion-mnist ..."
    if ! ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1; then
      echo "setup: could not apt-get install dataset-fashion-mnist; Fashion-MNIST will come from" \
           "tensorflow-datasets (needs internet) or FASHION_MNIST_DIR." >&2
    fi
  else
    echo "setup: no apt-get here; set FASHION_MNIST_DIR to a folder with the four *-ubyte.gz files," \
         "or let tensorflow-datasets download Fashion-MNIST." >&2
  fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.tf_gamma_prune-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing tf-gamma-prune[dev,litert,tfmot] into .venv (first time: a few minutes) ..."
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q -e ".[dev,litert,tfmot]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import tf_gamma_prune, tensorflow, keras" 2>/dev/null \
    || { echo "setup: installation failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
