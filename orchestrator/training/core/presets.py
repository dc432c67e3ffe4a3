"""Training options for a LoRA run through kohya sd-scripts: one validated model, named presets, overrides.

Pure logic: every option the presets touch is checked here with a message that names it, before any file is
written or any process started. The values map one to one onto sd-scripts arguments (see config.py).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.core.errors import InvalidInput

Base = Literal["sd15", "sdxl"]
MixedPrecision = Literal["no", "fp16", "bf16"]
LrScheduler = Literal["constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial"]
Sampler = Literal["ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
                  "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a"]

# Optimizer names sd-scripts (48d368f, library/train_util.get_optimizer) knows, with the module each one needs.
OPTIMIZERS: dict[str, str] = {
    "AdamW": "torch",
    "AdamW8bit": "bitsandbytes",
    "PagedAdamW": "bitsandbytes",
    "PagedAdamW8bit": "bitsandbytes",
    "PagedAdamW32bit": "bitsandbytes",
    "Lion": "lion_pytorch",
    "Lion8bit": "bitsandbytes",
    "PagedLion8bit": "bitsandbytes",
    "SGDNesterov": "torch",
    "SGDNesterov8bit": "bitsandbytes",
    "DAdaptation": "dadaptation",
    "DAdaptAdam": "dadaptation",
    "DAdaptLion": "dadaptation",
    "Prodigy": "prodigyopt",
    "Adafactor": "transformers",
    "AdamWScheduleFree": "schedulefree",
    "RAdamScheduleFree": "schedulefree",
}
Optimizer = Literal["AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion", "Lion8bit",
                    "PagedLion8bit", "SGDNesterov", "SGDNesterov8bit", "DAdaptation", "DAdaptAdam", "DAdaptLion",
                    "Prodigy", "Adafactor", "AdamWScheduleFree", "RAdamScheduleFree"]
# Optimizers that find their own step size: sd-scripts expects learning_rate around 1.0 for them.
ADAPTIVE_OPTIMIZERS = frozenset({"DAdaptation", "DAdaptAdam", "DAdaptLion", "Prodigy"})
# U-Net downsampling: latents are 1/8 of the pixels, SD1.x halves them 3 times, SDXL twice.
RESOLUTION_STEP: dict[str, int] = {"sd15": 64, "sdxl": 32}

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class TrainingSpec(BaseModel):
    """Everything that decides a LoRA training run; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: Base = Field(description="Base model family: sd15 (train_network.py) or sdxl (sdxl_train_network.py).")
    network_dim: int = Field(ge=1, le=1024, description="LoRA rank.")
    network_alpha: float = Field(gt=0, description="LoRA alpha (scale = alpha / rank); at most network_dim.")
    learning_rate: float = Field(gt=0, le=10, description="Base learning rate.")
    unet_lr: float | None = Field(None, gt=0, le=10, description="U-Net learning rate; default learning_rate.")
    text_encoder_lr: float | None = Field(None, gt=0, le=10, description="Text encoder learning rate.")
    max_train_steps: int | None = Field(None, ge=1, le=1_000_000, description="Total optimisation steps.")
    max_train_epochs: int | None = Field(None, ge=1, le=10_000, description="Epochs (instead of steps).")
    resolution: int = Field(ge=64, le=4096, description="Training resolution in pixels (square).")
    batch_size: int = Field(1, ge=1, le=64)
    num_repeats: int = Field(1, ge=1, le=1000, description="How often each image is seen per epoch.")
    optimizer: Optimizer = "AdamW"
    lr_scheduler: LrScheduler = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    mixed_precision: MixedPrecision = "no"
    network_train_unet_only: bool = False
    cache_text_encoder_outputs: bool = Field(False, description="SDXL only; needs network_train_unet_only.")
    cache_latents: bool = True
    gradient_checkpointing: bool = False
    enable_bucket: bool = Field(False, description="Aspect-ratio buckets instead of one square resolution.")
    shuffle_caption: bool = False
    keep_tokens: int = Field(0, ge=0, le=75, description="Leading caption tokens kept in place when shuffling.")
    flip_aug: bool = False
    save_every_n_steps: int | None = Field(None, ge=1, description="Intermediate checkpoint every N steps.")
    save_every_n_epochs: int | None = Field(None, ge=1, description="Intermediate checkpoint every N epochs.")
    sample_every_n_steps: int | None = Field(None, ge=1, description="Sample images every N steps.")
    sample_prompts: list[str] = Field(default_factory=list, description="Sample prompts; {trigger} is replaced.")
    sample_steps: int = Field(20, ge=1, le=150)
    sample_sampler: Sampler = "euler_a"
    seed: int = Field(42, ge=0, le=2**32 - 1)
    trigger: str = Field(min_length=1, max_length=64, description="The trigger word put into every caption.")
    output_name: str = Field("lora", description="Final file name: <output_name>.safetensors.")
    max_data_loader_n_workers: int = Field(2, ge=0, le=64)
    sdpa: bool = Field(True, description="PyTorch scaled-dot-product attention in the U-Net.")

    @field_validator("trigger")
    @classmethod
    def _trigger(cls, v: str) -> str:
        if v != v.strip() or any(c in v for c in ",\n\r\t{}"):
            raise ValueError("the trigger must be a word or phrase without surrounding spaces, commas, braces "
                             "or line breaks")
        return v

    @field_validator("output_name")
    @classmethod
    def _output_name(cls, v: str) -> str:
        if not NAME.match(v) or v.endswith(".safetensors"):
            raise ValueError("output_name must be 1-100 letters, digits, '.', '_' or '-', without the "
                             ".safetensors extension")
        return v

    @field_validator("sample_prompts")
    @classmethod
    def _prompts(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.strip() or "\n" in p or "\r" in p:
                raise ValueError("each sample prompt must be one non-empty line")
            if " --" in f" {p}":
                raise ValueError(f"sample prompt {p!r} must not hold sd-scripts options ('--'); "
                                 "size, steps and seed come from the spec")
        return v

    @model_validator(mode="after")
    def _combination(self) -> TrainingSpec:
        step = RESOLUTION_STEP[self.base]
        if self.resolution % step:
            raise ValueError(f"resolution {self.resolution} must be a multiple of {step} for {self.base}")
        if self.max_train_steps is None and self.max_train_epochs is None:
            raise ValueError("give max_train_steps or max_train_epochs")
        if self.max_train_steps is not None and self.max_train_epochs is not None:
            raise ValueError("give max_train_steps or max_train_epochs, not both (sd-scripts lets epochs win)")
        if self.network_alpha > self.network_dim:
            raise ValueError(f"network_alpha {self.network_alpha:g} must not exceed network_dim {self.network_dim}")
        if self.cache_text_encoder_outputs:
            if self.base != "sdxl":
                raise ValueError("cache_text_encoder_outputs is an SDXL option (sdxl_train_network.py)")
            if not self.network_train_unet_only:
                raise ValueError("cache_text_encoder_outputs requires network_train_unet_only")
            if self.shuffle_caption:
                raise ValueError("cache_text_encoder_outputs cannot be used with shuffle_caption")
        if self.network_train_unet_only and self.text_encoder_lr is not None:
            raise ValueError("text_encoder_lr is set but network_train_unet_only trains no text encoder")
        if self.keep_tokens and not self.shuffle_caption:
            raise ValueError("keep_tokens only matters with shuffle_caption")
        if self.sample_every_n_steps is not None and not self.sample_prompts:
            raise ValueError("sample_every_n_steps needs at least one sample prompt")
        if self.optimizer in ADAPTIVE_OPTIMIZERS and self.learning_rate < 0.1:
            raise ValueError(f"{self.optimizer} finds its own step size: set learning_rate to about 1.0, "
                             f"not {self.learning_rate:g}")
        if self.optimizer not in ADAPTIVE_OPTIMIZERS and self.learning_rate > 0.01:
            raise ValueError(f"learning_rate {self.learning_rate:g} is far too high for {self.optimizer} "
                             "(LoRA uses about 1e-4)")
        if self.lr_warmup_steps and self.lr_scheduler == "constant":
            raise ValueError("lr_warmup_steps needs a scheduler with warm-up (e.g. constant_with_warmup)")
        if self.max_train_steps is not None:
            for name in ("save_every_n_steps", "sample_every_n_steps"):
                every = getattr(self, name)
                if every is not None and every > self.max_train_steps:
                    raise ValueError(f"{name} {every} is larger than max_train_steps {self.max_train_steps}")
        return self

    @property
    def script(self) -> str:
        """The sd-scripts entry point for this base."""
        return "sdxl_train_network.py" if self.base == "sdxl" else "train_network.py"

    @property
    def required_module(self) -> str:
        """The Python module the optimizer needs in sd-scripts' environment (bitsandbytes is installed only on
        request). Not checked yet: ``runner.preflight`` is where a run would be refused when it is missing."""
        return OPTIMIZERS[self.optimizer]

    def prompts(self) -> list[str]:
        """Sample prompts with the trigger filled in."""
        return [p.replace("{trigger}", self.trigger) for p in self.sample_prompts]


_CHARACTER_PROMPTS = ["photo of {trigger}, portrait, looking at the camera",
                      "{trigger} standing in a park, full body, daylight"]

PRESETS: dict[str, TrainingSpec] = {
    "sd15-character": TrainingSpec(
        base="sd15", network_dim=16, network_alpha=8, learning_rate=1e-4, unet_lr=1e-4, text_encoder_lr=5e-5,
        max_train_steps=1600, resolution=512, batch_size=2, num_repeats=10, optimizer="AdamW",
        lr_scheduler="cosine", mixed_precision="fp16", cache_latents=True, gradient_checkpointing=False,
        save_every_n_steps=400, sample_every_n_steps=400, sample_prompts=_CHARACTER_PROMPTS, seed=42,
        trigger="mlchar", output_name="character-sd15"),
    "sdxl-character": TrainingSpec(
        base="sdxl", network_dim=16, network_alpha=8, learning_rate=1e-4, unet_lr=1e-4,
        max_train_steps=2000, resolution=1024, batch_size=1, num_repeats=10, optimizer="AdamW",
        lr_scheduler="cosine", mixed_precision="bf16", network_train_unet_only=True,
        cache_text_encoder_outputs=True, cache_latents=True, gradient_checkpointing=True,
        save_every_n_steps=500, sample_every_n_steps=500, sample_prompts=_CHARACTER_PROMPTS, seed=42,
        trigger="mlchar", output_name="character-sdxl"),
}


def describe_errors(exc: ValidationError) -> list[str]:
    """Pydantic errors as 'field: message' lines."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown training option"
        lines.append(f"{where}: {msg}" if where else msg)
    return lines


def spec_from(preset: str | None, overrides: dict[str, Any]) -> TrainingSpec:
    """A validated spec: the preset's values (if any) with ``overrides`` on top; InvalidInput names each problem.

    Overriding one of max_train_steps/max_train_epochs drops the preset's other one; a shorter run than the
    preset's keeps its save/sample intervals within the run (at most max_train_steps) unless they are given.
    """
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise InvalidInput(f"unknown training preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        values = PRESETS[preset].model_dump(exclude_unset=False)
    for a, b in (("max_train_steps", "max_train_epochs"), ("max_train_epochs", "max_train_steps")):
        if overrides.get(a) is not None and b not in overrides:
            values.pop(b, None)
    if overrides.get("network_train_unet_only") and "text_encoder_lr" not in overrides:
        values.pop("text_encoder_lr", None)
    steps = overrides.get("max_train_steps")
    if isinstance(steps, int) and steps > 0:
        for name in ("save_every_n_steps", "sample_every_n_steps"):
            if name not in overrides and isinstance(values.get(name), int) and values[name] > steps:
                values[name] = steps
    values.update(overrides)
    try:
        return TrainingSpec.model_validate(values)
    except ValidationError as exc:
        problems = describe_errors(exc)
        raise InvalidInput("invalid training options: " + "; ".join(problems),
                           errors=[{"message": p} for p in problems]) from exc
