#!/usr/bin/env bash
# Run the test suite (ruff, the layering check of docs/architecture.md, then pytest in 2 processes, a test file each at a time: the integration tests
# mostly wait on ComfyUI servers, leases and timeouts, so two files overlap well on 2 cores). Extra arguments
# go to pytest (`-n 0` runs it in one process).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache  # the import-linter contracts of pyproject.toml: arrows only point down
.venv/bin/python -m pytest -n "${MEDIALAB_TEST_WORKERS:-2}" --dist loadfile "$@"
