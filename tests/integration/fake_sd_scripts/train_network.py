"""A stand-in for kohya sd-scripts' train_network.py: a TEST DEVICE FOR THE TRAINER PROTOCOL ONLY.

It trains nothing. It reads the same --config_file/--dataset_config TOML files the runner writes for the
real script, checks that the dataset folder holds captioned images and the base model exists, then prints
tqdm-style progress to stderr (redrawn with \\r, as sd-scripts does), "epoch" and "saving checkpoint" lines to
stdout, writes per-step checkpoints and sample PNGs, and a final LoRA-shaped safetensors file with ss_*
metadata. The tests of the real thing (part A's end-to-end run) use a real sd-scripts checkout, named by
MEDIALAB_SD_SCRIPTS_DIR. FAKE_STEP_S sets the seconds per step (default 0.05).
"""

import argparse
import hashlib
import json
import os
import struct
import sys
import time
import tomllib
import zlib
from pathlib import Path


def png(path: Path, seed: int, size: int = 16) -> None:
    raw = b"".join(b"\x00" + bytes((seed * 37 + x * 11 + y * 5) % 256 for x in range(size * 3)) for y in range(size))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def safetensors(path: Path, seed: bytes, dim: int, metadata: dict[str, str]) -> None:
    """A LoRA-shaped file (kohya key names, F32) without numpy or torch: header + little-endian floats."""
    layers = ["lora_unet_medialab_fake_proj_in", "lora_te_medialab_fake_q_proj"]
    header: dict = {"__metadata__": metadata}
    blobs, offset = [], 0
    for i, layer in enumerate(layers):
        for suffix, shape in ((".lora_down.weight", [dim, 8]), (".lora_up.weight", [8, dim]), (".alpha", [])):
            n = 1
            for s in shape:
                n *= s
            digest = hashlib.sha256(seed + f"{i}{suffix}".encode()).digest()
            data = b"".join(struct.pack("<f", (digest[k % 32] - 128) / 1280) for k in range(n))
            header[layer + suffix] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
            blobs.append(data)
            offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config_file", required=True)
    ap.add_argument("--dataset_config", required=True)
    ap.add_argument("--mixed_precision")
    ns = ap.parse_args()
    args = next(iter(tomllib.loads(Path(ns.config_file).read_text()).values()))
    dataset = tomllib.loads(Path(ns.dataset_config).read_text())
    image_dir = Path(dataset["datasets"][0]["subsets"][0]["image_dir"])
    images = sorted(p for p in image_dir.iterdir() if p.suffix == ".png")
    if not images:
        print("No data found. Please verify arguments (train_data_dir must be the parent of folders with images)")
        return 0
    for p in images:
        if not p.with_suffix(".txt").is_file():
            print(f"Traceback (most recent call last):\nFileNotFoundError: no caption for {p.name}", file=sys.stderr)
            return 1
    base = Path(args["pretrained_model_name_or_path"])
    if not base.is_file() and not (base / "model_index.json").is_file():  # a file, or a diffusers folder
        print(f"Traceback (most recent call last):\nFileNotFoundError: {base}", file=sys.stderr)
        return 1
    out = Path(args["output_dir"])
    name, total = args["output_name"], int(args.get("max_train_steps") or 4)
    save_every, sample_every = args.get("save_every_n_steps"), args.get("sample_every_n_steps")
    step_s = float(os.environ.get("FAKE_STEP_S", "0.05"))
    seed = hashlib.sha256(b"".join(p.read_bytes() for p in images) + str(args).encode()).digest()
    meta = {"ss_network_dim": str(args["network_dim"]), "ss_network_alpha": str(args["network_alpha"]),
            "ss_network_module": args["network_module"], "ss_base_model_version": "sd_v1",
            "ss_learning_rate": str(args["learning_rate"]), "ss_max_train_steps": str(total),
            "ss_num_train_images": str(len(images)), "ss_training_comment": args.get("training_comment", ""),
            "ss_tag_frequency": json.dumps({image_dir.name: {"fake": len(images)}}),
            "ss_sd_model_name": base.name, "modelspec.architecture": "stable-diffusion-v1/lora"}
    print("epoch 1/1", flush=True)
    sys.stderr.write(f"\rsteps:   0%|          | 0/{total} [00:00<?, ?it/s]")
    sys.stderr.flush()
    for step in range(1, total + 1):
        time.sleep(step_s)
        loss = 0.2 + 0.5 / step
        left = (total - step) * step_s
        bar = "#" * (10 * step // total)
        elapsed = min(int(step * step_s), 59)
        sys.stderr.write(f"\rsteps: {100 * step // total:3d}%|{bar:<10}| {step}/{total} "
                         f"[00:{elapsed:02d}<00:{min(int(left), 59):02d}, {step_s:.2f}s/it, avr_loss={loss:.4f}]")
        sys.stderr.flush()
        if save_every and step % save_every == 0 and step < total:
            ckpt = out / f"{name}-step{step:08d}.safetensors"
            print(f"\nsaving checkpoint: {ckpt}", flush=True)
            safetensors(ckpt, seed + str(step).encode(), int(args["network_dim"]), {**meta, "ss_steps": str(step)})
        if sample_every and step % sample_every == 0:
            (out / "sample").mkdir(parents=True, exist_ok=True)
            png(out / "sample" / f"{name}_{step:06d}_00_20260101000000_42.png", step)
    sys.stderr.write("\n")
    final = out / f"{name}.safetensors"
    print(f"saving checkpoint: {final}", flush=True)
    safetensors(final, seed, int(args["network_dim"]), {**meta, "ss_steps": str(total)})
    print("model saved.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
