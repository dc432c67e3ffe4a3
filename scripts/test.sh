#!/usr/bin/env bash
# Run the test suite (ruff, then pytest). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
