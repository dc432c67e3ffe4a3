"""Load and save nodes that move bytes straight between ComfyUI and object storage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import objects

MB = 1024 * 1024


def _image_tensor(path: Path) -> tuple[Any, Any]:
    """IMAGE [1,H,W,3] float and MASK [1,H,W] as core LoadImage makes them."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        rgb = np.array(im.convert("RGB")).astype(np.float32) / 255.0
        if "A" in im.getbands():
            mask = 1.0 - np.array(im.getchannel("A")).astype(np.float32) / 255.0
        else:
            mask = np.zeros(rgb.shape[:2], dtype=np.float32)
    return torch.from_numpy(rgb)[None], torch.from_numpy(mask)[None]


class MediaLabLoadImage:
    """An image straight from object storage, by key or (presigned) URL."""

    CATEGORY = "medialab"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        return {"required": {"source": ("STRING", {"default": "", "tooltip": "Object key or http(s) URL."})},
                "optional": {"max_mb": ("INT", {"default": 512, "min": 1, "max": 1 << 20})}}

    @classmethod
    def IS_CHANGED(cls, source: str, max_mb: int = 512) -> str:  # noqa: N802
        return source  # content-addressed: the same key is the same bytes

    def load(self, source: str, max_mb: int = 512) -> tuple:
        path = objects.fetch(source, objects.temp_path(".img"), max_mb * MB)
        try:
            return _image_tensor(path)
        finally:
            path.unlink(missing_ok=True)


class MediaLabLoadVideo:
    """A video straight from object storage into ComfyUI's input folder (no 100 MB upload limit)."""

    CATEGORY = "medialab"
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        return {"required": {"source": ("STRING", {"default": ""})},
                "optional": {"max_mb": ("INT", {"default": 16384, "min": 1, "max": 1 << 22})}}

    @classmethod
    def IS_CHANGED(cls, source: str, max_mb: int = 16384) -> str:  # noqa: N802
        return source

    def load(self, source: str, max_mb: int = 16384) -> tuple:
        import folder_paths
        from comfy_api.input_impl import VideoFromFile

        dest = Path(folder_paths.get_input_directory()) / "medialab" / objects.local_name(source)
        if not dest.exists():
            tmp = objects.fetch(source, objects.temp_path(".video"), max_mb * MB)
            objects.move_into(tmp, dest.parent, dest.name)
        return (VideoFromFile(str(dest)),)


def _metadata(prompt: Any, extra_pnginfo: Any) -> dict[str, Any]:
    meta = dict(extra_pnginfo or {})
    if prompt is not None:
        meta["prompt"] = prompt
    return meta


class MediaLabSaveImage:
    """Save images straight to object storage; the ui output lists each object's key, sha256 and size."""

    CATEGORY = "medialab"
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "medialab"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save(self, images: Any, filename_prefix: str, prompt: Any = None, extra_pnginfo: Any = None) -> dict:
        import numpy as np
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for k, v in _metadata(prompt, extra_pnginfo).items():
            info.add_text(k, json.dumps(v))
        results = []
        for i, image in enumerate(images):
            arr = np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)
            path = objects.temp_path(".png")
            try:
                Image.fromarray(arr).save(path, pnginfo=info, compress_level=4)
                obj = objects.store(path)
            finally:
                path.unlink(missing_ok=True)
            name = f"{filename_prefix.rsplit('/', 1)[-1]}_{i:05}.png"
            results.append({**obj, "content_type": "image/png", "filename": name,
                            "width": int(arr.shape[1]), "height": int(arr.shape[0])})
        return {"ui": {"medialab_objects": results}}


class MediaLabSaveVideo:
    """Save a video straight to object storage (encoded to a temporary file, then a multipart upload)."""

    CATEGORY = "medialab"
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        return {"required": {"video": ("VIDEO",), "filename_prefix": ("STRING", {"default": "medialab"}),
                             "format": ("STRING", {"default": "auto"}), "codec": ("STRING", {"default": "auto"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save(self, video: Any, filename_prefix: str, format: str = "auto", codec: str = "auto",  # noqa: A002
             prompt: Any = None, extra_pnginfo: Any = None) -> dict:
        from comfy_api.util import VideoCodec, VideoContainer

        ext = VideoContainer.get_extension(format)
        path = objects.temp_path(f".{ext}")
        try:
            video.save_to(str(path), format=VideoContainer(format), codec=VideoCodec(codec),
                          metadata=_metadata(prompt, extra_pnginfo) or None)
            obj = objects.store(path)
        finally:
            path.unlink(missing_ok=True)
        width, height = video.get_dimensions()
        name = f"{filename_prefix.rsplit('/', 1)[-1]}_00000.{ext}"
        return {"ui": {"medialab_objects": [{**obj, "content_type": f"video/{ext}", "filename": name,
                                             "width": int(width), "height": int(height)}]}}
