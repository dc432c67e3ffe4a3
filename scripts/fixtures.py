"""Build the fixture models the tests and the demo use: real architectures, random weights.

Usage: python scripts/fixtures.py MODELS_DIR                 (ESRGAN x4 and x1, shallow SD1.5, a character LoRA,
                                                              a RestoreFormer face model)
       python scripts/fixtures.py --rife FRAME_INTERPOLATION_PACK_DIR   (needs the pack: ckpts/rife/rife47.pth)
       python scripts/fixtures.py --ipadapter MODELS_DIR   (full SD1.5, CLIP ViT-H, IP-Adapter PLUS: 3.5 GB)
       python scripts/fixtures.py --faceid MODELS_DIR IPADAPTER_PACK_DIR   (FACEID PLUS V2 + buffalo_l stand-ins)
       python scripts/fixtures.py --training-images DIR   (f1.png .. f6.png: pictures to try a dataset with)

Deterministic: a rebuild is byte-identical (one seeded generator per tensor, at most one metadata key),
so a model's sha256 is stable across machines. Existing files are left alone.
"""

from __future__ import annotations

import copy
import sys
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

SEED = 1234


def fill(state: dict[str, torch.Tensor], seed: int = SEED) -> dict[str, torch.Tensor]:
    """LayerNorm-like weights 1 and biases 0, everything else randn * 0.02 (avoids NaNs), as fp16."""
    out = {}
    for key, t in state.items():
        gen = torch.Generator().manual_seed(seed + zlib.crc32(key.encode()))
        if key.endswith("bias"):
            v = torch.zeros(t.shape)
        elif t.dim() == 1 and key.endswith("weight"):  # LayerNorm / GroupNorm scales
            v = torch.ones(t.shape)
        else:
            v = torch.randn(t.shape, generator=gen) * 0.02
        out[key] = v.to(torch.float16).contiguous()
    return out


def esrgan_x4(path: Path) -> None:
    """A 4x ESRGAN RRDBNet (16 filters, 2 blocks) that spandrel detects as ESRGAN x4, initialised to do its
    job roughly: the trunk's random weights are kept, but its shortcut adds nothing (``model.1.sub.2`` zero),
    the first and last convolutions pass the colour channels through and the two upsampling convolutions
    smooth the nearest-neighbour steps, so the output is the input enlarged 4x (about bilinear), not noise:
    a demo or a screenshot shows the frame went through."""
    from spandrel.architectures.ESRGAN import ESRGAN

    net = ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=2, scale=4)
    state = fill(net.state_dict())
    smooth = torch.tensor([1.0, 2.0, 1.0])
    kernels = {"model.0.weight": _centre(), "model.3.weight": torch.outer(smooth, smooth) / 16,
               "model.6.weight": torch.outer(smooth, smooth) / 16, "model.8.weight": _centre(),
               "model.10.weight": _centre()}
    for key, kernel in kernels.items():
        w = torch.zeros(state[key].shape)
        for c in range(3):  # colour channel c rides on feature c (LeakyReLU keeps positive values as they are)
            w[c, c] = kernel
        state[key] = w.to(torch.float16)
    state["model.1.sub.2.weight"] = torch.zeros(state["model.1.sub.2.weight"].shape, dtype=torch.float16)
    save_file(state, str(path), metadata={"medialab": "fixture esrgan x4: enlarges its input (random trunk)"})


def esrgan_x1(path: Path) -> None:
    """A 1x ESRGAN RRDBNet (16 filters, 2 blocks; no upsampling layers, so spandrel detects scale 1 and calls
    it a restoration model), initialised like ``esrgan_x4``: the trunk's shortcut adds nothing, the first and
    last convolutions pass the colour channels through and the middle (HR) convolution smooths lightly, so the
    output is the input at the same size, a little softer (a stand-in for denoising), not noise."""
    from spandrel.architectures.ESRGAN import ESRGAN

    net = ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=2, scale=1)
    state = fill(net.state_dict())
    soft = torch.tensor([1.0, 6.0, 1.0])
    kernels = {"model.0.weight": _centre(), "model.2.weight": torch.outer(soft, soft) / 64,
               "model.4.weight": _centre()}
    for key, kernel in kernels.items():
        w = torch.zeros(state[key].shape)
        for c in range(3):
            w[c, c] = kernel
        state[key] = w.to(torch.float16)
    state["model.1.sub.2.weight"] = torch.zeros(state["model.1.sub.2.weight"].shape, dtype=torch.float16)
    save_file(state, str(path), metadata={"medialab": "fixture esrgan x1: restores at the same size (random trunk)"})


def _centre() -> torch.Tensor:
    k = torch.zeros(3, 3)
    k[1, 1] = 1.0
    return k


def _comfy() -> None:
    """Make ComfyUI's model code importable (CPU), from the tree setup.sh installed."""
    runtime = Path(__file__).resolve().parent.parent / ".runtime" / "comfyui"
    if str(runtime) not in sys.path:
        sys.argv = [sys.argv[0], "--cpu"]
        sys.path.insert(0, str(runtime))
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401


# A shallow SD1.5 U-Net: the real widths (model_channels 320, context_dim 768, 8 heads), so ComfyUI's
# detector takes it for SD1.5, but two levels with one block each instead of four with two.
SD15_TINY_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1, 1],
                      channel_mult=[1, 2], transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1],
                      transformer_depth_middle=1, context_dim=768, num_heads=8, use_spatial_transformer=True,
                      use_linear_in_transformer=False, legacy=False)


def sd15_state(unet: dict) -> dict[str, torch.Tensor]:
    """The single-file (original layout) state of an SD1.5 checkpoint with the given U-Net config: the
    full CLIP-L text encoder and VAE (ComfyUI builds those with fixed sizes), shapes only (meta tensors)."""
    _comfy()
    import json

    import comfy.clip_model
    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    with torch.device("meta"):
        parts = {
            "model.diffusion_model.": UNetModel(**copy.deepcopy(unet), operations=ops, device="meta"),
            "first_stage_model.": AutoencoderKL(ddconfig={
                "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0},
                embed_dim=4),
            "cond_stage_model.transformer.": comfy.clip_model.CLIPTextModel(
                json.loads((Path(comfy.clip_model.__file__).parent / "sd1_clip_config.json").read_text()),
                torch.float32, "meta", ops),
        }
    return {prefix + k: v for prefix, module in parts.items() for k, v in module.state_dict().items()
            if not k.endswith("text_projection.weight")}


def sd15_tiny(path: Path) -> None:
    """An SD1.5-shaped checkpoint (shallow U-Net, 0.3 GB) that CheckpointLoaderSimple loads as SD1.5."""
    save_file(fill(sd15_state(SD15_TINY_UNET)), str(path), metadata={"medialab": "fixture sd15 random weights"})


def character_lora(path: Path, rank: int = 4) -> None:
    """A LoRA for ``sd15_tiny`` in kohya's key layout (lora_unet_* / lora_te_*, lora_down/lora_up/alpha) on
    every attention projection, so ComfyUI's LoraLoader patches real layers."""
    targets = {k for k, v in sd15_state(SD15_TINY_UNET).items() if v.dim() == 2 and (
        (".attn1.to_" in k or ".attn2.to_" in k) and k.startswith("model.diffusion_model.")
        or ".self_attn." in k and k.startswith("cond_stage_model."))}
    state: dict[str, torch.Tensor] = {}
    shapes = sd15_state(SD15_TINY_UNET)
    for key in sorted(targets):
        if key.startswith("model.diffusion_model."):
            name = "lora_unet_" + key.removeprefix("model.diffusion_model.").removesuffix(".weight").replace(".", "_")
        else:
            name = "lora_te_" + key.removeprefix("cond_stage_model.transformer.").removesuffix(".weight") \
                .replace(".", "_")
        out_f, in_f = shapes[key].shape
        state[f"{name}.lora_down.weight"] = torch.empty(rank, in_f)
        state[f"{name}.lora_up.weight"] = torch.empty(out_f, rank)
    state = fill(state, SEED + 1)
    for key in list(state):
        if key.endswith(".lora_down.weight"):
            state[key.replace(".lora_down.weight", ".alpha")] = torch.tensor(float(rank), dtype=torch.float16)
    save_file(state, str(path), metadata={"ss_network_dim": str(rank)})


# The real SD1.5 U-Net layout (842M parameters). IP-Adapter patches attention blocks by their position,
# and sd-scripts builds its own fixed U-Net, so both need the full layout.
SD15_FULL_UNET = dict(SD15_TINY_UNET, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                      transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                      transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])  # popped from the end


def sd15_full(path: Path) -> None:
    """A full-size SD1.5 checkpoint with random weights (2.1 GB), for IP-Adapter end-to-end runs."""
    save_file(fill(sd15_state(SD15_FULL_UNET)), str(path), metadata={"medialab": "fixture sd15 random weights"})


def clip_vision_h(path: Path) -> None:
    """CLIP ViT-H/14 vision tower (632M parameters): ComfyUI picks its ViT-H config from layer 30 existing
    and layer 47 not; IPAdapter_plus finds the file by its name."""
    d, state = 1280, {"vision_model.embeddings.class_embedding": torch.empty(1280),
                      "vision_model.embeddings.patch_embedding.weight": torch.empty(1280, 3, 14, 14),
                      "vision_model.embeddings.position_embedding.weight": torch.empty(257, 1280),
                      "visual_projection.weight": torch.empty(1024, 1280)}
    for part in ("vision_model.pre_layrnorm", "vision_model.post_layernorm"):
        state |= {f"{part}.weight": torch.empty(d), f"{part}.bias": torch.empty(d)}
    for i in range(32):
        layer = f"vision_model.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            state |= {f"{layer}{norm}.weight": torch.empty(d), f"{layer}{norm}.bias": torch.empty(d)}
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state |= {f"{layer}self_attn.{proj}.weight": torch.empty(d, d),
                      f"{layer}self_attn.{proj}.bias": torch.empty(d)}
        state |= {f"{layer}mlp.fc1.weight": torch.empty(4 * d, d), f"{layer}mlp.fc1.bias": torch.empty(4 * d),
                  f"{layer}mlp.fc2.weight": torch.empty(d, 4 * d), f"{layer}mlp.fc2.bias": torch.empty(d)}
    save_file(fill(state), str(path), metadata={"medialab": "fixture clip vision h random weights"})


def ipadapter_plus_sd15(path: Path) -> None:
    """IP-Adapter PLUS for SD1.5 (``image_proj.latents`` marks PLUS; 16 cross-attention adapters)."""
    w, state = 768, {"image_proj.latents": torch.empty(1, 16, 768), "image_proj.proj_in.weight": torch.empty(768, 1280),
                     "image_proj.proj_in.bias": torch.empty(768), "image_proj.proj_out.weight": torch.empty(768, 768),
                     "image_proj.proj_out.bias": torch.empty(768), "image_proj.norm_out.weight": torch.empty(768),
                     "image_proj.norm_out.bias": torch.empty(768)}
    for i in range(4):
        layer = f"image_proj.layers.{i}."
        for norm in ("0.norm1", "0.norm2", "1.0"):
            state |= {f"{layer}{norm}.weight": torch.empty(w), f"{layer}{norm}.bias": torch.empty(w)}
        state |= {f"{layer}0.to_q.weight": torch.empty(w, w), f"{layer}0.to_kv.weight": torch.empty(2 * w, w),
                  f"{layer}0.to_out.weight": torch.empty(w, w), f"{layer}1.1.weight": torch.empty(4 * w, w),
                  f"{layer}1.3.weight": torch.empty(w, 4 * w)}
    widths = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280]
    for n, c in enumerate(widths):
        state |= {f"ip_adapter.{2 * n + 1}.to_k_ip.weight": torch.empty(c, w),
                  f"ip_adapter.{2 * n + 1}.to_v_ip.weight": torch.empty(c, w)}
    save_file(fill(state), str(path), metadata={"medialab": "fixture ip-adapter plus sd15 random weights"})


def _onnx_detector(path: Path) -> None:
    """A stand-in for buffalo_l's SCRFD detector (test device for the code path only, never a product model):
    any input size, 9 outputs (score, box, 5 landmarks for strides 8/16/32, 2 anchors a cell); every anchor
    says "face, 4 strides wide, landmarks where a face has them", so insightface always finds one."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outs = [], [], []
    consts = {"score": [0.9], "box": [2.0, 2.0, 2.0, 2.0],
              "kps": [-0.8, -0.6, 0.8, -0.6, 0.0, 0.2, -0.6, 0.9, 0.6, 0.9]}
    for kind in ("score", "box", "kps"):
        for stride in (8, 16, 32):
            k, name = len(consts[kind]), f"{kind}_{stride}"
            inits += [numpy_helper.from_array(np.zeros((2 * k, 3, stride, stride), np.float32), f"{name}_w"),
                      numpy_helper.from_array(np.array(consts[kind] * 2, np.float32), f"{name}_b"),
                      numpy_helper.from_array(np.array([-1, k], np.int64), f"{name}_shape")]
            nodes += [helper.make_node("Conv", ["input.1", f"{name}_w", f"{name}_b"], [f"{name}_c"],
                                       strides=[stride, stride]),
                      helper.make_node("Transpose", [f"{name}_c"], [f"{name}_t"], perm=[0, 2, 3, 1]),
                      helper.make_node("Reshape", [f"{name}_t", f"{name}_shape"], [name])]
            outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, k]))
    graph = helper.make_graph(nodes, "scrfd_standin", [helper.make_tensor_value_info(
        "input.1", TensorProto.FLOAT, [1, 3, "h", "w"])], outs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def _onnx_recognizer(path: Path) -> None:
    """A stand-in for buffalo_l's ArcFace recognizer: 112x112 face -> 512-d embedding."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    gen = np.random.default_rng(SEED)
    inits = [numpy_helper.from_array(gen.standard_normal((3, 512)).astype(np.float32), "w"),
             numpy_helper.from_array(gen.standard_normal(512).astype(np.float32), "b")]
    nodes = [helper.make_node("GlobalAveragePool", ["input.1"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["683"])]
    graph = helper.make_graph(nodes, "arcface_standin", [helper.make_tensor_value_info(
        "input.1", TensorProto.FLOAT, [None, 3, 112, 112])], [helper.make_tensor_value_info(
            "683", TensorProto.FLOAT, [None, 512])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def faceid_plusv2_sd15(models_dir: Path, pack: Path) -> list[Path]:
    """FACEID PLUS V2 for SD1.5: the adapter (image projection from the pack's own ProjModelFaceIdPlus;
    ``0.to_q_lora.down.weight`` marks FaceID), its LoRA, and buffalo_l stand-ins (needs insightface,
    onnxruntime and onnx)."""
    sys.path.insert(0, str(pack))
    from image_proj_models import ProjModelFaceIdPlus

    made = []
    adapter = models_dir / "ipadapter" / "ip-adapter-faceid-plusv2_sd15.safetensors"
    if not adapter.exists():
        proj = ProjModelFaceIdPlus(cross_attention_dim=768, id_embeddings_dim=512, clip_embeddings_dim=1280,
                                   num_tokens=4).state_dict()
        state = {f"image_proj.{k}": torch.empty(v.shape) for k, v in proj.items()}
        state["ip_adapter.0.to_q_lora.down.weight"] = torch.empty(128, 320)
        widths = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280]
        for n, c in enumerate(widths):
            state |= {f"ip_adapter.{2 * n + 1}.to_k_ip.weight": torch.empty(c, 768),
                      f"ip_adapter.{2 * n + 1}.to_v_ip.weight": torch.empty(c, 768)}
        adapter.parent.mkdir(parents=True, exist_ok=True)
        save_file(fill(state), str(adapter), metadata={"medialab": "fixture faceid plusv2 random weights"})
        made.append(adapter)
    for rel, builder in {"loras/ip-adapter-faceid-plusv2_sd15_lora.safetensors": character_lora,
                         "insightface/models/buffalo_l/det_10g.onnx": _onnx_detector,
                         "insightface/models/buffalo_l/w600k_r50.onnx": _onnx_recognizer}.items():
        made += build(models_dir, {rel: builder})
    return made


# Built on demand (--ipadapter) for the IP-Adapter end-to-end runs: 3.5 GB together.
IPADAPTER_FIXTURES = {"checkpoints/sd15_full.safetensors": sd15_full,
                      "clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": clip_vision_h,
                      "ipadapter/ip-adapter-plus_sd15.safetensors": ipadapter_plus_sd15}

def restoreformer_tiny(path: Path) -> None:
    """A small RestoreFormer (32 channels, 5 levels) that spandrel detects as a face restoration model (FaceSR):
    the face fixture of restore-face. Random weights: the faces it gives back are noise."""
    from spandrel.architectures.RestoreFormer import RestoreFormer

    net = RestoreFormer(n_embed=64, embed_dim=32, ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, z_channels=32)
    save_file(fill(net.state_dict()), str(path), metadata={"medialab": "fixture restoreformer: random weights"})


FIXTURES = {"upscale_models/tiny_x4.safetensors": esrgan_x4,
            "upscale_models/tiny_x1.safetensors": esrgan_x1,
            "checkpoints/tiny_sd15.safetensors": sd15_tiny,
            "loras/tiny_character.safetensors": character_lora,
            "facerestore_models/tiny_restoreformer.safetensors": restoreformer_tiny}


# The metadata of fixtures that an earlier set-up built and a newer builder replaces (rebuilt when found).
SUPERSEDED = {"fixture esrgan x4 random weights"}


def _superseded(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("medialab") in SUPERSEDED
    except Exception:  # noqa: BLE001  (an unreadable file is rebuilt too)
        return True


def build(models_dir: Path, fixtures: dict = FIXTURES) -> list[Path]:
    """Build the fixtures that are missing (or superseded); existing ones are left alone."""
    made = []
    for rel, builder in fixtures.items():
        path = models_dir / rel
        if path.exists() and not _superseded(path):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        builder(tmp)
        tmp.replace(path)
        made.append(path)
    return made


def rife47(pack: Path) -> Path:
    """The pack's own IFNet 4.7 with random weights, where the pack looks for it (ckpts/rife/rife47.pth)."""
    _comfy()  # the pack's model code picks its device from ComfyUI's arguments
    sys.path.insert(0, str(pack))
    from vfi_models.rife.rife_arch import IFNet

    state = IFNet(arch_ver="4.7").state_dict()
    gen = torch.Generator().manual_seed(SEED)
    state = {k: torch.randn(v.shape, generator=gen) * 0.02 if v.dtype.is_floating_point else v
             for k, v in state.items()}
    dest = pack / "ckpts" / "rife" / "rife47.pth"
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dest)
    return dest


def training_images(folder: Path, count: int = 6, size: int = 1024) -> list[Path]:
    """``f1.png`` .. ``f<count>.png``: a figure (head and body) in a different place, size and colour on each of
    distinct backgrounds, ``size`` px square (big enough for both presets: no upscaling). They are no faces and
    no character, but they pass every dataset check, so the training walkthrough runs as written."""
    import random

    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(1, count + 1):
        path = folder / f"f{i}.png"
        if path.exists():
            continue
        rnd = random.Random(SEED + i)
        img = Image.new("RGB", (size, size))
        draw = ImageDraw.Draw(img)
        top, bottom = [tuple(rnd.randrange(256) for _ in range(3)) for _ in range(2)]
        for y in range(size):  # a vertical gradient, its own per picture
            t = y / (size - 1)
            draw.line([(0, y), (size, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
        x, y, r = rnd.randrange(size // 5, 4 * size // 5), rnd.randrange(size // 5, size // 2), rnd.randrange(60, 160)
        colour = tuple(rnd.randrange(256) for _ in range(3))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        draw.rectangle([x - 2 * r, y + r, x + 2 * r, min(size, y + 5 * r)], fill=colour[::-1])
        for _ in range(8):  # a few shapes around it, so no two pictures look alike
            cx, cy, cr = rnd.randrange(size), rnd.randrange(size), rnd.randrange(20, 120)
            draw.rectangle([cx, cy, cx + cr, cy + cr], fill=tuple(rnd.randrange(256) for _ in range(3)))
        img.save(path, format="PNG")
        made.append(path)
    return made


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--training-images":
        for p in training_images(Path(sys.argv[2])):
            print(f"built {p}")
        sys.exit(0)
    if len(sys.argv) == 3 and sys.argv[1] == "--rife":
        print(f"built {rife47(Path(sys.argv[2]).resolve())}")
    elif len(sys.argv) == 4 and sys.argv[1] == "--faceid":
        for p in faceid_plusv2_sd15(Path(sys.argv[2]), Path(sys.argv[3]).resolve()):
            print(f"built {p}")
    elif len(sys.argv) == 3 and sys.argv[1] == "--ipadapter":
        for p in build(Path(sys.argv[2]), IPADAPTER_FIXTURES):
            print(f"built {p}")
    elif len(sys.argv) == 2:
        for p in build(Path(sys.argv[1])):
            print(f"built {p}")
    else:
        sys.exit(__doc__)
