"""The project's own ComfyUI node pack, installed on every pool server (``scripts/install_node_pack.py``).

- MediaLabLoadImage / MediaLabLoadVideo: inputs straight from object storage (key or presigned URL), or from
  a URL that the URL rule (``urls.py``: MEDIALAB_URL_ALLOWLIST and the store's own endpoint) allows.
- MediaLabSaveImage / MediaLabSaveVideo: outputs straight to object storage; their ui output
  (``medialab_objects``) lists key, sha256, size, type and dimensions of each object.
- MediaLabParam*: parameter nodes that mark a graph input as a template parameter.
- MediaLabFaceRestoreModelLoader / MediaLabFaceRestore: face restoration (``faces.py``), models in
  ``models/facerestore_models``.
- The editor's Media Lab panel (``web/medialab.js``, routes ``/medialab/editor/...`` in ``editor.py``): sign in
  to the orchestrator, open a template version, make an input a parameter, review and publish a new version.
- GET /medialab/info: the pack's version, the server's object storage (endpoint, bucket) and upload limit,
  which the orchestrator reads to pick the byte path per server; the custom node packs installed beside
  this one with their git commit, and the versions of a few Python packages (checked against the
  worker lock, ``worker.lock.toml``).
"""

import sys
from pathlib import Path

from .faces import FACE_NODES
from .nodes import MediaLabLoadImage, MediaLabLoadVideo, MediaLabSaveImage, MediaLabSaveVideo
from .params import PARAMETER_NODES

PACK_VERSION = "0.2.0"
WEB_DIRECTORY = "./web"  # the editor's Media Lab panel (web/medialab.js; its routes: editor.py)

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "MediaLabLoadImage": MediaLabLoadImage, "MediaLabLoadVideo": MediaLabLoadVideo,
    "MediaLabSaveImage": MediaLabSaveImage, "MediaLabSaveVideo": MediaLabSaveVideo, **PARAMETER_NODES,
    **FACE_NODES,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    name: "Media Lab " + name.removeprefix("MediaLab").replace("Param", "parameter: ") for name in NODE_CLASS_MAPPINGS
}


def _register_routes() -> None:
    """Only inside a running ComfyUI: its server module is loaded then (elsewhere, e.g. when the orchestrator
    imports ``urls``, nothing is imported)."""
    if "server" not in sys.modules:
        return
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    if getattr(PromptServer, "instance", None) is None:
        return

    from . import editor, objects, packs

    editor.register(PromptServer.instance.routes, editor.Link())

    @PromptServer.instance.routes.get("/medialab/info")
    async def info(_request: web.Request) -> web.Response:
        import folder_paths
        from comfy.cli_args import args

        return web.json_response({"pack": "medialab", "version": PACK_VERSION, "storage": objects.config(),
                                  "max_upload_mb": args.max_upload_size,
                                  "custom_nodes": [p for d in folder_paths.get_folder_paths("custom_nodes")
                                                   for p in packs.installed_packs(Path(d))],
                                  "python_packages": packs.distributions()})


_register_routes()
if "folder_paths" in sys.modules:  # inside ComfyUI: the face models' folder (faces.py)
    from .faces import register_folder

    register_folder()
if "server" in sys.modules:  # inside ComfyUI: frame progress of ComfyUI-Frame-Interpolation (frame_progress.py)
    from .frame_progress import hook as hook_frame_progress

    hook_frame_progress()
