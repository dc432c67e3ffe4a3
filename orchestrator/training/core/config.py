"""The files and the command line of one sd-scripts run, generated from a TrainingSpec (pure, no I/O).

Only keys sd-scripts (48d368f) accepts are written: unknown keys in the dataset TOML fail with voluptuous'
"extra keys not allowed". The caption extension is set to ".txt" explicitly (sd-scripts' default is ".caption").
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from orchestrator.training.core.presets import RESOLUTION_STEP, TrainingSpec

CAPTION_EXTENSION = ".txt"
NETWORK_MODULE = "networks.lora"
SAMPLE_GUIDANCE = 7.5


def toml_value(value: Any) -> str:
    """One TOML value: bool, int, finite float, str (JSON escapes are valid TOML basic-string escapes), list."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML value {value!r} is not finite")
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_table(values: dict[str, Any], indent: str = "") -> list[str]:
    """``key = value`` lines, None values left out, in the given order."""
    return [f"{indent}{k} = {toml_value(v)}" for k, v in values.items() if v is not None]


def dataset_values(spec: TrainingSpec, image_dir: Path | str) -> dict[str, Any]:
    """The dataset config as a dict: {general, datasets: [{..., subsets: [{...}]}]}."""
    dataset: dict[str, Any] = {
        "resolution": spec.resolution,
        "batch_size": spec.batch_size,
        "enable_bucket": spec.enable_bucket,
    }
    if spec.enable_bucket:
        step = RESOLUTION_STEP[spec.base]
        dataset |= {"min_bucket_reso": max(step, spec.resolution // 2), "max_bucket_reso": spec.resolution * 2,
                    "bucket_reso_steps": step, "bucket_no_upscale": True}
    subset = {
        "image_dir": str(image_dir),
        "num_repeats": spec.num_repeats,
        "class_tokens": spec.trigger,
        "caption_extension": CAPTION_EXTENSION,
        "shuffle_caption": spec.shuffle_caption,
        "keep_tokens": spec.keep_tokens,
        "flip_aug": spec.flip_aug,
    }
    return {"general": {"caption_extension": CAPTION_EXTENSION}, "datasets": [dataset | {"subsets": [subset]}]}


def dataset_toml(spec: TrainingSpec, image_dir: Path | str) -> str:
    """sd-scripts' --dataset_config: one DreamBooth-style dataset with one subset (the prepared image folder)."""
    values = dataset_values(spec, image_dir)
    lines = ["[general]", *toml_table(values["general"])]
    for ds in values["datasets"]:
        lines += ["", "[[datasets]]", *toml_table({k: v for k, v in ds.items() if k != "subsets"})]
        for sub in ds["subsets"]:
            lines += ["", "  [[datasets.subsets]]", *toml_table(sub, "  ")]
    return "\n".join(lines) + "\n"


def args_values(spec: TrainingSpec, *, pretrained_model: Path | str, output_dir: Path | str,
                logging_dir: Path | str | None, tokenizer_cache_dir: Path | str | None,
                sample_prompts_file: Path | str | None) -> dict[str, Any]:
    """sd-scripts' training arguments as a dict (argument name -> value); None means "not given"."""
    sampling = spec.sample_every_n_steps is not None and sample_prompts_file is not None
    workers = spec.max_data_loader_n_workers
    return {
        "pretrained_model_name_or_path": str(pretrained_model),
        "output_dir": str(output_dir),
        "output_name": spec.output_name,
        "save_model_as": "safetensors",
        "save_precision": "fp16",
        "network_module": NETWORK_MODULE,
        "network_dim": spec.network_dim,
        "network_alpha": float(spec.network_alpha),
        "network_train_unet_only": spec.network_train_unet_only or None,
        "learning_rate": spec.learning_rate,
        "unet_lr": spec.unet_lr,
        # a list: sd-scripts takes one learning rate per text encoder (nargs="*")
        "text_encoder_lr": [spec.text_encoder_lr] if spec.text_encoder_lr is not None else None,
        "max_train_steps": spec.max_train_steps,
        "max_train_epochs": spec.max_train_epochs,
        "optimizer_type": spec.optimizer,
        "lr_scheduler": spec.lr_scheduler,
        "lr_warmup_steps": spec.lr_warmup_steps or None,
        "mixed_precision": spec.mixed_precision,
        "no_half_vae": (spec.base == "sdxl") or None,
        "cache_latents": spec.cache_latents or None,
        "cache_text_encoder_outputs": spec.cache_text_encoder_outputs or None,
        "gradient_checkpointing": spec.gradient_checkpointing or None,
        "sdpa": spec.sdpa or None,
        "save_every_n_steps": spec.save_every_n_steps,
        "save_every_n_epochs": spec.save_every_n_epochs,
        "sample_every_n_steps": spec.sample_every_n_steps if sampling else None,
        "sample_prompts": str(sample_prompts_file) if sampling else None,
        "sample_sampler": spec.sample_sampler if sampling else None,
        "seed": spec.seed,
        "max_data_loader_n_workers": workers,
        "persistent_data_loader_workers": (workers > 0) or None,
        "logging_dir": str(logging_dir) if logging_dir is not None else None,
        "log_with": "tensorboard" if logging_dir is not None else None,
        "tokenizer_cache_dir": str(tokenizer_cache_dir) if tokenizer_cache_dir is not None else None,
        "training_comment": f"medialab; trigger: {spec.trigger}",
        "console_log_simple": True,
    }


def args_toml(spec: TrainingSpec, *, pretrained_model: Path | str, output_dir: Path | str,
              logging_dir: Path | str | None, tokenizer_cache_dir: Path | str | None,
              sample_prompts_file: Path | str | None) -> str:
    """sd-scripts' --config_file (one flat table; command-line values override it)."""
    values = args_values(spec, pretrained_model=pretrained_model, output_dir=output_dir, logging_dir=logging_dir,
                         tokenizer_cache_dir=tokenizer_cache_dir, sample_prompts_file=sample_prompts_file)
    return "\n".join(["[medialab]", *toml_table(values)]) + "\n"


def sample_prompts_text(spec: TrainingSpec) -> str:
    """sd-scripts' --sample_prompts file: one prompt a line with size, steps, seed and guidance."""
    r = spec.resolution
    return "".join(f"{p} --w {r} --h {r} --s {spec.sample_steps} --d {spec.seed} --l {SAMPLE_GUIDANCE}\n"
                   for p in spec.prompts())


def command(spec: TrainingSpec, *, sd_scripts_dir: Path | str, python: Path | str, args_file: Path | str,
            dataset_file: Path | str, accelerate: bool = True, cpu: bool = False) -> list[str]:
    """The argv of the run. Under accelerate the launcher runs the script in a child process; on a CPU mixed
    precision is turned off (fp16 does not run there)."""
    script = str(Path(sd_scripts_dir) / spec.script)
    precision = "no" if cpu else spec.mixed_precision
    argv = [str(python)]
    if accelerate:
        argv += ["-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "1"]
        if cpu:
            argv += ["--cpu"]
        argv += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", precision,
                 "--dynamo_backend", "no"]
    argv += [script, "--config_file", str(args_file), "--dataset_config", str(dataset_file)]
    if cpu:
        argv += ["--mixed_precision", "no"]
    return argv
