#!/usr/bin/env bash
# Create ./.venv and install slem with everything it needs (idempotent; safe to re-run).
#  - the Debian packages dataset-fashion-mnist and postgresql (server binaries for the
#    distributed-HPO tests), where apt is available and we may use it;
#  - slem in editable mode with its test tools, torch pinned by constraints.txt to the
#    local CPU wheel of these machines (users elsewhere may keep any torch >= 2.3).
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    echo "installing Debian package dataset-fashion-mnist ..."
    if ! { $SUDO apt-get update -qq && \
           DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist; } \
         >/dev/null; then
      echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST needs --data-dir or SLEM_DATA" >&2
    fi
  else
    echo "note: no apt-get; for Fashion-MNIST put the IDX .gz files in \$SLEM_DATA" >&2
  fi
fi

# PostgreSQL server binaries: the tests start a throwaway server for distributed HPO workers
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    echo "installing Debian package postgresql ..."
    if ! { $SUDO apt-get update -qq && \
           DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql; } >/dev/null; then
      echo "warning: could not install postgresql; the distributed-HPO tests will be skipped" >&2
    fi
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP_ARGS=(-q --disable-pip-version-check -c constraints.txt)
[ -d /opt/wheels ] && PIP_ARGS+=(--find-links /opt/wheels)
.venv/bin/python -m pip install "${PIP_ARGS[@]}" -e ".[dev,parquet,bench,tensorboard]"
echo "slem installed in .venv ($(.venv/bin/slem --version))"
