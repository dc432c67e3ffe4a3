"""Parameter nodes: an artist drops one into a graph in ComfyUI to mark an input as a template parameter.

Each has a ``name`` widget (the parameter's name in the template) and passes its value on, so the graph
still runs as it is in ComfyUI. The template importer reads them (by class and ``name``) to build the
manifest; ``help`` becomes the form's help text.
"""

from __future__ import annotations

from typing import Any


class AnyType(str):
    """A type equal to every type: ComfyUI's validation compares with ``!=`` first, so this output connects
    to any input, including the COMBO inputs that choices and model names feed."""

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


ANY = AnyType("*")


def _base(value: tuple) -> dict:
    return {"required": {"name": ("STRING", {"default": "param"}), "value": value},
            "optional": {"help": ("STRING", {"default": "", "multiline": True})}}


class _Param:
    CATEGORY = "medialab/parameters"
    FUNCTION = "run"

    def run(self, name: str, value: Any, help: str = "", **_: Any) -> tuple:  # noqa: A002
        return (value,)


class MediaLabParamText(_Param):
    RETURN_TYPES = ("STRING",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        return _base(("STRING", {"default": "", "multiline": True}))


class MediaLabParamInt(_Param):
    RETURN_TYPES = ("INT",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        full = {"min": -(2**63), "max": 2**63 - 1}  # the editor clamps a widget without min/max to [0, 2048]
        spec = _base(("INT", {"default": 0, **full}))
        spec["optional"] |= {"min": ("INT", {"default": -(2**31), **full}), "max": ("INT", {"default": 2**31, **full})}
        return spec


class MediaLabParamFloat(_Param):
    RETURN_TYPES = ("FLOAT",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        full = {"min": -1e12, "max": 1e12, "step": 0.01}
        spec = _base(("FLOAT", {"default": 0.0, **full}))
        spec["optional"] |= {"min": ("FLOAT", {"default": -1e12, **full}), "max": ("FLOAT", {"default": 1e12, **full})}
        return spec


class MediaLabParamBool(_Param):
    RETURN_TYPES = ("BOOLEAN",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        return _base(("BOOLEAN", {"default": False}))


class MediaLabParamChoice(_Param):
    RETURN_TYPES = (ANY,)

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        spec = _base(("STRING", {"default": ""}))
        spec["required"]["choices"] = ("STRING", {"default": "", "tooltip": "Comma-separated choices."})
        return spec

    def run(self, name: str, value: Any, choices: str = "", help: str = "", **_: Any) -> tuple:  # noqa: A002
        allowed = [c.strip() for c in choices.split(",") if c.strip()]
        if allowed and value not in allowed:
            raise ValueError(f"parameter {name}: {value!r} is not one of {', '.join(allowed)}")
        return (value,)


class MediaLabParamModel(_Param):
    RETURN_TYPES = (ANY,)

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        spec = _base(("STRING", {"default": ""}))
        spec["required"]["folder"] = ("STRING", {"default": "checkpoints", "tooltip": "Models folder."})
        return spec


class MediaLabParamImage:
    """An image parameter; in ComfyUI it loads a file of the input folder like LoadImage."""

    CATEGORY = "medialab/parameters"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        from nodes import LoadImage

        spec = LoadImage.INPUT_TYPES()
        return {"required": {"name": ("STRING", {"default": "image"}), **spec["required"]},
                "optional": {"help": ("STRING", {"default": "", "multiline": True})}}

    @classmethod
    def VALIDATE_INPUTS(cls, image: str, **_: Any) -> bool | str:  # noqa: N802
        from nodes import LoadImage

        return LoadImage.VALIDATE_INPUTS(image)  # any file of the input folder, subfolders included

    @classmethod
    def IS_CHANGED(cls, image: str, **_: Any) -> str:  # noqa: N802
        from nodes import LoadImage

        return LoadImage.IS_CHANGED(image)

    def run(self, name: str, image: str, help: str = "") -> tuple:  # noqa: A002
        from nodes import LoadImage

        return LoadImage().load_image(image)


class MediaLabParamVideo:
    """A video parameter; in ComfyUI it loads a file of the input folder like LoadVideo."""

    CATEGORY = "medialab/parameters"
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        return {"required": {"name": ("STRING", {"default": "video"}), "file": ("STRING", {"default": ""})},
                "optional": {"help": ("STRING", {"default": "", "multiline": True})}}

    def run(self, name: str, file: str, help: str = "") -> tuple:  # noqa: A002
        import folder_paths
        from comfy_api.input_impl import VideoFromFile

        return (VideoFromFile(folder_paths.get_annotated_filepath(file)),)


class MediaLabMultiply:
    """a x b, e.g. a clip's frame rate times an interpolation multiplier (ComfyUI has no core math node)."""

    CATEGORY = "medialab"
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802
        return {"required": {"a": ("FLOAT", {"default": 1.0, "min": -1e12, "max": 1e12, "forceInput": True}),
                             "b": ("INT", {"default": 1, "min": -(2**31), "max": 2**31, "forceInput": True})}}

    def run(self, a: float, b: int) -> tuple:
        return (float(a) * b,)


PARAMETER_NODES = {cls.__name__: cls for cls in (
    MediaLabParamText, MediaLabParamInt, MediaLabParamFloat, MediaLabParamBool, MediaLabParamChoice,
    MediaLabParamModel, MediaLabParamImage, MediaLabParamVideo, MediaLabMultiply)}
