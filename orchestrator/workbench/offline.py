"""The environment daggr, gradio and huggingface_hub must see before they are imported: no telemetry, no Hub,
the workbench's own cache and scratchpad database (docs/daggr.md, "Offline settings")."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from orchestrator.core.errors import InvalidInput

DAGGR_VERSION = "0.8.0"


def offline_env(folder: Path) -> dict[str, str]:
    """The variables, with daggr's cache (``HF_HOME``) and database under ``folder``."""
    return {
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "DAGGR_DEPENDENCY_CHECK": "skip",
        "HF_HOME": str(folder / "hf"),
        "DAGGR_DB_PATH": str(folder / "daggr.db"),
    }


def apply(folder: Path) -> dict[str, str]:
    """Set the variables in this process (they win over what was there) and create ``folder``."""
    (folder / "hf").mkdir(parents=True, exist_ok=True)
    env = offline_env(folder)
    os.environ.update(env)
    return env


def require_daggr() -> None:
    """Refuse with the install hint when the optional extra is missing."""
    if importlib.util.find_spec("daggr") is None:
        raise InvalidInput(f"the workbench needs daggr=={DAGGR_VERSION}: pip install 'medialab[workbench]'")
