"""The worker lock file (``worker.lock.toml``) read from disk; its rules are in ``core.lock``."""

from __future__ import annotations

import tomllib
from pathlib import Path

from orchestrator.core.errors import InvalidInput
from orchestrator.core.lock import WorkerLock, parse_lock
from orchestrator.settings import PROJECT_ROOT

DEFAULT_LOCK = PROJECT_ROOT / "worker.lock.toml"


def load_lock(path: Path = DEFAULT_LOCK) -> WorkerLock:
    """Read and validate a lock file; errors name the file and the field."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise InvalidInput(f"worker lock {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"worker lock {path} is not valid TOML: {exc}") from exc
    return parse_lock(data, str(path))
