#!/usr/bin/env bash
# The whole test suite: install (idempotent), then ruff, mypy on src/, the layers contract
# (import-linter), the strict docs build (MkDocs), pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
.venv/bin/pytest "$@"
