"""Install the project's ComfyUI node pack on a pool server.

Usage: python scripts/install_node_pack.py COMFYUI_DIR [--python PATH] [--link]

Copies (or, with --link, symlinks) custom_nodes/ to COMFYUI_DIR/custom_nodes/medialab and installs the
pack's one dependency, the minio SDK, into the Python that runs that ComfyUI (default: this one). Then
give the server its object storage in its environment (MEDIALAB_S3_ENDPOINT, MEDIALAB_S3_ACCESS_KEY,
MEDIALAB_S3_SECRET_KEY, MEDIALAB_S3_BUCKET, MEDIALAB_S3_SECURE) and restart it; `medialab servers
refresh` then shows the pack, and jobs on that server take the direct byte path.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parent.parent / "custom_nodes"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("comfyui_dir", type=Path)
    ap.add_argument("--python", default=sys.executable, help="the Python that runs that ComfyUI")
    ap.add_argument("--link", action="store_true", help="symlink instead of copying (development)")
    args = ap.parse_args()
    if not (args.comfyui_dir / "main.py").exists():
        sys.exit(f"{args.comfyui_dir} is not a ComfyUI folder (no main.py)")
    dest = args.comfyui_dir / "custom_nodes" / "medialab"
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    if args.link:
        dest.symlink_to(PACK, target_is_directory=True)
    else:
        shutil.copytree(PACK, dest, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([args.python, "-m", "pip", "install", "-q", "minio>=7.2"], check=True)
    print(f"node pack installed at {dest}; restart ComfyUI with MEDIALAB_S3_* set for the direct byte path")


if __name__ == "__main__":
    main()
