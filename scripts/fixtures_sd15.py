"""Build an SD1.5-shaped test model for sd-scripts: a diffusers folder with random weights.

Usage: python scripts/fixtures_sd15.py OUT_DIR [--shallow]
Run it with the Python of sd-scripts' environment (it needs diffusers and transformers).

sd-scripts rebuilds its own fixed-width U-Net (320/640/1280/1280) whatever the checkpoint says, so the U-Net
is full size (842M parameters, 1.7 GB in fp16); only its cross-attention width follows the text encoder. The
text encoder (2 layers, width 64) and the VAE (32 channels) are tiny, which keeps a 2-step LoRA run at 64 px
around 7 GB and 25 s on a CPU. A diffusers folder is used because sd-scripts reads the text encoder and VAE
configs from it (a single .safetensors file is converted with the fixed full-size configs).
``--shallow`` builds a two-level U-Net instead: diffusers loads it, sd-scripts refuses it (a failing run).

Deterministic: one seeded generator per tensor, norm weights 1, biases 0, the rest randn * 0.02 (no NaNs),
fp16 safetensors with one metadata key, so a rebuild is byte-identical.
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

SEED = 1234
CROSS_ATTENTION_DIM = 64
SAMPLE_SIZE = 8  # latent size for 64 px
FULL_UNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SHALLOW_UNET = dict(block_out_channels=(320, 640), layers_per_block=1,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
SCHEDULER = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "set_alpha_to_one": False,
             "skip_prk_steps": True, "steps_offset": 1, "prediction_type": "epsilon", "trained_betas": None,
             "clip_sample": False}


def fill(shapes: dict, seed: int = SEED) -> dict:
    """Random fp16 tensors for a {key: tensor-with-shape} dict (meta tensors are fine)."""
    import torch

    out = {}
    for key, t in shapes.items():
        if key.endswith("bias"):
            v = torch.zeros(t.shape)
        elif "norm" in key and t.dim() == 1:
            v = torch.ones(t.shape)
        else:
            gen = torch.Generator().manual_seed(seed + zlib.crc32(key.encode()))
            v = torch.randn(t.shape, generator=gen) * 0.02
        out[key] = v.to(torch.float16).contiguous()
    return out


def _save(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(fill(state), str(path), metadata={"format": "pt"})


def build_sd15_checkpoint(path: Path | str, *, full_unet: bool = True) -> Path:
    """Write the diffusers folder at ``path`` (model_index.json, unet, vae, text_encoder, scheduler); returns it.
    An existing complete folder is left alone."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(path)
    index = out / "model_index.json"
    if index.exists():
        return out
    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=SAMPLE_SIZE, in_channels=4, out_channels=4,
                                    cross_attention_dim=CROSS_ATTENTION_DIM, attention_head_dim=8,
                                    **(FULL_UNET if full_unet else SHALLOW_UNET))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=1, norm_num_groups=32, sample_size=64)
        te_config = CLIPTextConfig(vocab_size=49408, hidden_size=CROSS_ATTENTION_DIM, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                   hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
                                   pad_token_id=49407)
        text_encoder = CLIPTextModel(te_config)
    for name, module in (("unet", unet), ("vae", vae)):
        module.save_config(str(out / name))
        _save(module.state_dict(), out / name / "diffusion_pytorch_model.safetensors")
    te_config.architectures = ["CLIPTextModel"]
    te_config.save_pretrained(str(out / "text_encoder"))
    _save(text_encoder.state_dict(), out / "text_encoder" / "model.safetensors")
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=1))
    index.write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None], "image_encoder": [None, None],
        "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": [None, None], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=1))
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] != "--shallow"):
        sys.exit(__doc__)
    print(f"built {build_sd15_checkpoint(sys.argv[1], full_unet=len(sys.argv) == 2)}")
