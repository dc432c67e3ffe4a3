"""Print the service's OpenAPI document as JSON: sorted keys, indent 2, stable across machines.

Usage: .venv/bin/python scripts/openapi.py > clients/ts/openapi.json

The app is built with ``dispatch=False`` over a throw-away home (nothing is started: the document does not need
the lifespan), and the document is checked for the temp home's path and the machine's home directory so that
neither leaks into the committed client.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def export() -> str:
    """The OpenAPI document as text (ends with a newline)."""
    from orchestrator.api.app import create_app
    from orchestrator.settings import Settings

    with tempfile.TemporaryDirectory(prefix="medialab-openapi-") as home:
        schema: dict[str, Any] = create_app(Settings(home=Path(home)), dispatch=False).openapi()
        text = json.dumps(schema, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
        leaks = [p for p in (home, str(Path.home()), str(ROOT)) if p and p != "/" and p in text]
        if leaks:
            raise SystemExit(f"the OpenAPI document names machine paths: {leaks}")
    return text


if __name__ == "__main__":
    sys.stdout.write(export())
