"""Face restoration: a face model (spandrel's "FaceSR" architectures: GFPGAN, RestoreFormer, CodeFormer with
spandrel_extra_arches) applied to each face of an image, or to the whole image when it is a face crop.

Core ComfyUI loads these files but applies them to the whole frame at the model's fixed size, which is right
only for an aligned face crop. Here each face OpenCV's frontal-face detector finds (``opencv-python-headless``
on the server) is cut out as a square with some context, restored at the model's size, scaled back and blended
in under a feathered mask, so the rest of the frame is left as it was. The models live in their own folder,
``models/facerestore_models``, so a server's /models lists which it has and a job asking for one no server holds
is refused before it is queued. ComfyUI is imported only inside the node methods: the geometry below is plain
Python that the tests call directly.
"""

from __future__ import annotations

import logging
from typing import Any

FOLDER = "facerestore_models"
MODEL_SIZE = 512  # GFPGAN's fixed input; RestoreFormer and CodeFormer take it too
MODES = ["detect faces", "whole image"]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1

log = logging.getLogger("medialab.faces")


def register_folder() -> None:
    """``models/facerestore_models`` (plus any path extra_model_paths.yaml gave it) with the model extensions."""
    import os

    import folder_paths

    paths = list(folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))[0])
    default = os.path.join(folder_paths.models_dir, FOLDER)
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(folder_paths.supported_pt_extensions))


# -- geometry (pure) -------------------------------------------------------------------------------------------
def face_square(box: Box, width: int, height: int, padding: float) -> Box:
    """The face's box grown by ``padding`` of its size on every side, made square and kept inside the image
    (shifted, not cut, where it fits; cut to the image where it does not)."""
    x0, y0, x1, y1 = box
    side = round(max(x1 - x0, y1 - y0) * (1 + 2 * padding))
    side = min(side, width, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(min(max(round(cx - side / 2), 0), width - side))
    top = int(min(max(round(cy - side / 2), 0), height - side))
    return left, top, left + side, top + side


def feather(size: int, border: float = 0.12) -> list[float]:
    """A 1-D ramp from 0 at the edges to 1 inside (``border`` of ``size`` each side); its outer product is the
    blend mask, so a restored square has no visible seam."""
    ramp = max(int(size * border), 1)
    return [min(1.0, (i + 0.5) / ramp, (size - i - 0.5) / ramp) for i in range(size)]


def find_faces(rgb: Any) -> list[Box]:
    """Frontal faces in an HxWx3 uint8 array, largest first (OpenCV's Haar cascade)."""
    try:
        import cv2
    except ImportError as exc:
        raise RuntimeError("finding faces needs OpenCV on the ComfyUI server: pip install "
                           "'opencv-python-headless>=4.8,<5' (or set faces to 'whole image' for a face crop)") from exc
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    least = max(24, min(grey.shape) // 16)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(least, least))
    boxes = [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in found]
    return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


# -- the model ---------------------------------------------------------------------------------------------------
def load_face_model(state_dict: dict[str, Any], name: str) -> Any:
    """A spandrel descriptor of a face restoration model; anything else is refused naming what it is."""
    from spandrel import ImageModelDescriptor, ModelLoader, canonicalize_state_dict

    model = ModelLoader().load_from_state_dict(canonicalize_state_dict(state_dict)).eval()
    if not isinstance(model, ImageModelDescriptor) or model.purpose != "FaceSR":
        raise ValueError(f"{name} is an {model.architecture.name} model for {model.purpose}, not a face restoration "
                         f"model (GFPGAN, RestoreFormer, CodeFormer): put it in upscale_models instead")
    return model


def restore_square(model: Any, crop: Any, device: Any) -> Any:
    """A 1x3xSxS float crop restored by the model at MODEL_SIZE and scaled back to S."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    side = crop.shape[-1]
    x = F.interpolate(crop, size=(MODEL_SIZE, MODEL_SIZE), mode="bicubic", align_corners=False).clamp(0, 1)
    with torch.no_grad():
        y = model(x.to(device)).float().cpu().clamp(0, 1)
    return F.interpolate(y, size=(side, side), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def restore_image(model: Any, image: Any, *, strength: float, mode: str, padding: float,
                  device: Any) -> tuple[Any, int]:
    """One HxWx3 float image (0..1) with its faces restored; the number of faces."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    out = image.clone()
    h, w = image.shape[0], image.shape[1]
    if mode == "whole image":
        chw = image.permute(2, 0, 1).unsqueeze(0)
        square = F.interpolate(chw, size=(MODEL_SIZE, MODEL_SIZE), mode="bicubic", align_corners=False).clamp(0, 1)
        with torch.no_grad():
            y = model(square.to(device)).float().cpu().clamp(0, 1)
        y = F.interpolate(y, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        restored = y[0].permute(1, 2, 0)
        return image * (1 - strength) + restored * strength, 1
    boxes = find_faces((image * 255).round().clamp(0, 255).to(torch.uint8).numpy())
    for box in boxes:
        x0, y0, x1, y1 = face_square(box, w, h, padding)
        crop = out[y0:y1, x0:x1].permute(2, 0, 1).unsqueeze(0)
        restored = restore_square(model, crop, device)[0].permute(1, 2, 0)
        ramp = torch.tensor(feather(x1 - x0))
        mask = (torch.outer(ramp, ramp) * strength).unsqueeze(-1)
        out[y0:y1, x0:x1] = out[y0:y1, x0:x1] * (1 - mask) + restored * mask
    return out, len(boxes)


# -- the nodes ----------------------------------------------------------------------------------------------------
class MediaLabFaceRestoreModelLoader:
    CATEGORY = "medialab/faces"
    FUNCTION = "load"
    RETURN_TYPES = ("FACE_RESTORE_MODEL",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        import folder_paths

        return {"required": {"model_name": (folder_paths.get_filename_list(FOLDER),)}}

    def load(self, model_name: str) -> tuple:
        import comfy.utils
        import folder_paths

        path = folder_paths.get_full_path_or_raise(FOLDER, model_name)
        return (load_face_model(comfy.utils.load_torch_file(path, safe_load=True), model_name),)


class MediaLabFaceRestore:
    """Each frame of the batch (an image or a video's frames) with its faces restored; progress per frame."""

    CATEGORY = "medialab/faces"
    FUNCTION = "restore"
    RETURN_TYPES = ("IMAGE", "INT")
    RETURN_NAMES = ("image", "faces")

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        return {"required": {
            "image": ("IMAGE",),
            "face_model": ("FACE_RESTORE_MODEL",),
            "strength": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.05,
                                   "tooltip": "How much of the restored face replaces the original."}),
            "faces": (MODES, {"default": MODES[0], "tooltip": "Find the faces, or restore the whole image "
                                                              "(it is an aligned face crop)."}),
            "padding": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.05,
                                  "tooltip": "Context kept around each face, as a share of its size."}),
        }}

    def restore(self, image: Any, face_model: Any, strength: float, faces: str, padding: float) -> tuple:
        import comfy.model_management
        import comfy.utils
        import torch

        device = comfy.model_management.get_torch_device()
        face_model.to(device)
        bar = comfy.utils.ProgressBar(image.shape[0])
        frames, total = [], 0
        try:
            for i in range(image.shape[0]):
                frame, found = restore_image(face_model, image[i].float().cpu(), strength=strength, mode=faces,
                                             padding=padding, device=device)
                frames.append(frame)
                total += found
                bar.update_absolute(i + 1, image.shape[0])
        finally:
            face_model.to("cpu")
        log.info("medialab face restore: %d faces in %d frames", total, image.shape[0])
        return (torch.stack(frames).to(image.dtype), total)


FACE_NODES: dict[str, type] = {"MediaLabFaceRestoreModelLoader": MediaLabFaceRestoreModelLoader,
                               "MediaLabFaceRestore": MediaLabFaceRestore}
