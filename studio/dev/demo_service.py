"""A throw-away service for developing and checking the studio by hand: one real ComfyUI worker on the CPU
(with the fixture models), the API on 127.0.0.1:PORT serving studio/dist under /studio, SQLite under a temp
home, and three keys (admin, run, export) written to <home>/keys.json. Stop it with Ctrl-C.

    .venv/bin/python studio/dev/demo_service.py [PORT]
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn

from orchestrator.api.app import create_app
from orchestrator.app import keys as key_app
from orchestrator.comfy.worker import LocalWorker
from orchestrator.settings import PROJECT_ROOT, Settings

RUNTIME = PROJECT_ROOT / ".runtime" / "comfyui"
MODELS = PROJECT_ROOT / ".runtime" / "models"


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    home = Path(tempfile.mkdtemp(prefix="studio-demo-"))
    worker = LocalWorker(RUNTIME, MODELS, home / "comfy", device="cpu")
    worker.start()
    try:
        settings = Settings(home=home / "home", comfy_servers=[worker.url])
        app = create_app(settings, dispatch=True)

        def keys() -> None:  # once the app's lifespan has made its context (a lifespan app runs no startup hooks)
            while getattr(app.state, "ctx", None) is None:
                time.sleep(0.2)
            out = {}
            with app.state.ctx.db.session() as s:
                for role in ("admin", "run", "export"):
                    _row, key = key_app.create_key(s, f"demo-{role}", [role])
                    out[role] = key
            (home / "keys.json").write_text(json.dumps(out))
            print(f"keys: {home / 'keys.json'}", flush=True)

        threading.Thread(target=keys, daemon=True).start()
        uvicorn.run(app, host="127.0.0.1", port=port)
    finally:
        worker.stop()


if __name__ == "__main__":
    main()
