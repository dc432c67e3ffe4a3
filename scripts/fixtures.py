"""Build the fixture models the tests and the demo use: real architectures, random weights.

Usage: python scripts/fixtures.py MODELS_DIR
       python scripts/fixtures.py --rife FRAME_INTERPOLATION_PACK_DIR   (needs the pack: ckpts/rife/rife47.pth)

Deterministic: a rebuild is byte-identical (one seeded generator per tensor, at most one metadata key),
so a model's sha256 is stable across machines. Existing files are left alone.
"""

from __future__ import annotations

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
        elif "norm" in key and t.dim() == 1:
            v = torch.ones(t.shape)
        else:
            v = torch.randn(t.shape, generator=gen) * 0.02
        out[key] = v.to(torch.float16).contiguous()
    return out


def esrgan_x4(path: Path) -> None:
    """A 4x ESRGAN RRDBNet (16 filters, 2 blocks) that spandrel detects as ESRGAN x4."""
    from spandrel.architectures.ESRGAN import ESRGAN

    net = ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=2, scale=4)
    save_file(fill(net.state_dict()), str(path), metadata={"medialab": "fixture esrgan x4 random weights"})


FIXTURES = {"upscale_models/tiny_x4.safetensors": esrgan_x4}


def build(models_dir: Path) -> list[Path]:
    made = []
    for rel, builder in FIXTURES.items():
        path = models_dir / rel
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        builder(tmp)
        tmp.replace(path)
        made.append(path)
    return made


def rife47(pack: Path) -> Path:
    """The pack's own IFNet 4.7 with random weights, where the pack looks for it (ckpts/rife/rife47.pth)."""
    runtime = Path(__file__).resolve().parent.parent / ".runtime" / "comfyui"
    sys.argv = [sys.argv[0], "--cpu"]  # the pack's model code picks its device from ComfyUI's arguments
    sys.path[:0] = [str(runtime), str(pack)]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401
    from vfi_models.rife.rife_arch import IFNet

    state = IFNet(arch_ver="4.7").state_dict()
    gen = torch.Generator().manual_seed(SEED)
    state = {k: torch.randn(v.shape, generator=gen) * 0.02 if v.dtype.is_floating_point else v
             for k, v in state.items()}
    dest = pack / "ckpts" / "rife" / "rife47.pth"
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dest)
    return dest


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rife":
        print(f"built {rife47(Path(sys.argv[2]).resolve())}")
    elif len(sys.argv) == 2:
        for p in build(Path(sys.argv[1])):
            print(f"built {p}")
    else:
        sys.exit(__doc__)
