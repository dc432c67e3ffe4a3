"""TrainingSpec validation, the presets and spec_from (preset + overrides)."""

import pytest

from orchestrator.core.errors import InvalidInput
from orchestrator.training.core.presets import OPTIMIZERS, PRESETS, TrainingSpec, spec_from

MINIMAL = dict(base="sd15", network_dim=4, network_alpha=1, learning_rate=1e-4, max_train_steps=2, resolution=64,
               trigger="tinything")


def problem(overrides: dict, preset: str | None = None) -> str:
    with pytest.raises(InvalidInput) as exc:
        spec_from(preset, overrides)
    return exc.value.message


def test_presets_are_valid_and_sane():
    sd15, sdxl = PRESETS["sd15-character"], PRESETS["sdxl-character"]
    assert (sd15.base, sd15.network_dim, sd15.network_alpha, sd15.learning_rate, sd15.resolution) == \
        ("sd15", 16, 8, 1e-4, 512)
    assert (sdxl.base, sdxl.network_dim, sdxl.network_alpha, sdxl.resolution) == ("sdxl", 16, 8, 1024)
    assert sdxl.cache_text_encoder_outputs and sdxl.network_train_unet_only and sdxl.text_encoder_lr is None
    assert sd15.script == "train_network.py" and sdxl.script == "sdxl_train_network.py"
    for spec in PRESETS.values():  # a round trip through the dict form keeps them valid
        assert TrainingSpec.model_validate(spec.model_dump()) == spec


def test_minimal_spec_and_defaults():
    spec = spec_from(None, MINIMAL)
    assert spec.optimizer == "AdamW" and spec.mixed_precision == "no" and spec.batch_size == 1
    assert spec.output_name == "lora" and spec.required_module == "torch"


def test_preset_with_overrides():
    spec = spec_from("sd15-character", {"trigger": "annaxyz", "max_train_epochs": 10, "network_dim": 32})
    assert spec.trigger == "annaxyz" and spec.network_dim == 32
    assert spec.max_train_epochs == 10 and spec.max_train_steps is None  # the preset's steps are dropped
    spec = spec_from("sd15-character", {"network_train_unet_only": True})
    assert spec.text_encoder_lr is None  # the preset's text-encoder rate goes with the text encoder


def test_unknown_preset_and_option():
    assert "known: sd15-character, sdxl-character" in problem({}, "sd3-character")
    msg = problem({**MINIMAL, "netwrk_dim": 8})
    assert "netwrk_dim: unknown training option" in msg


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"base": "sdxl", "resolution": 1000}, "resolution 1000 must be a multiple of 32 for sdxl"),
    ({"resolution": 96}, "resolution 96 must be a multiple of 64 for sd15"),
    ({"base": "sdxl", "cache_text_encoder_outputs": True}, "cache_text_encoder_outputs requires "
                                                           "network_train_unet_only"),
    ({"cache_text_encoder_outputs": True, "network_train_unet_only": True}, "SDXL option"),
    ({"max_train_epochs": 3}, "not both"),
    ({"max_train_steps": None}, "give max_train_steps or max_train_epochs"),
    ({"network_alpha": 8}, "network_alpha 8 must not exceed network_dim 4"),
    ({"network_dim": 0}, "network_dim: Input should be greater than or equal to 1"),
    ({"optimizer": "Adam"}, "optimizer: Input should be 'AdamW'"),
    ({"optimizer": "Prodigy"}, "Prodigy finds its own step size"),
    ({"learning_rate": 0.5}, "far too high"),
    ({"mixed_precision": "fp8"}, "mixed_precision: Input should be 'no', 'fp16' or 'bf16'"),
    ({"sample_every_n_steps": 1}, "sample_every_n_steps needs at least one sample prompt"),
    ({"sample_prompts": ["a cat --w 1024"]}, "must not hold sd-scripts options"),
    ({"save_every_n_steps": 5}, "save_every_n_steps 5 is larger than max_train_steps 2"),
    ({"trigger": "anna, girl"}, "the trigger must be a word"),
    ({"trigger": ""}, "trigger: String should have at least 1 character"),
    ({"output_name": "../evil"}, "output_name must be"),
    ({"output_name": "x.safetensors"}, "without the .safetensors extension"),
    ({"network_train_unet_only": True, "text_encoder_lr": 1e-5}, "trains no text encoder"),
    ({"keep_tokens": 1}, "keep_tokens only matters with shuffle_caption"),
    ({"lr_warmup_steps": 10}, "needs a scheduler with warm-up"),
    ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
])
def test_invalid_options_are_named(overrides, expected):
    assert expected in problem({**MINIMAL, **overrides})


def test_errors_list_every_problem():
    with pytest.raises(InvalidInput) as exc:
        spec_from(None, {**MINIMAL, "network_dim": 0, "batch_size": -1})
    assert len(exc.value.extra["errors"]) == 2


def test_optimizers_and_their_modules():
    assert spec_from(None, {**MINIMAL, "optimizer": "AdamW8bit"}).required_module == "bitsandbytes"
    assert spec_from(None, {**MINIMAL, "optimizer": "Prodigy", "learning_rate": 1.0}).required_module == "prodigyopt"
    assert {"AdamW", "AdamW8bit", "Lion", "Prodigy"} <= set(OPTIMIZERS)


def test_sample_prompts_get_the_trigger():
    spec = spec_from(None, {**MINIMAL, "sample_prompts": ["photo of {trigger}, smiling"], "sample_every_n_steps": 1})
    assert spec.prompts() == ["photo of tinything, smiling"]


def test_spec_is_immutable_and_serialisable():
    spec = spec_from("sdxl-character", {"trigger": "bob"})
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        spec.trigger = "x"  # type: ignore[misc]
    assert TrainingSpec.model_validate_json(spec.model_dump_json()) == spec


def test_a_short_run_keeps_the_presets_intervals_within_it():
    from orchestrator.training.core.presets import PRESETS, spec_from

    spec = spec_from("sd15-character", {"max_train_steps": 60, "trigger": "mlchar"})
    preset = PRESETS["sd15-character"]
    assert spec.max_train_steps == 60
    for name in ("save_every_n_steps", "sample_every_n_steps"):
        wanted = getattr(preset, name)
        assert getattr(spec, name) == (min(wanted, 60) if wanted else wanted)
    with pytest.raises(InvalidInput, match="save_every_n_steps 400 is larger than max_train_steps 60"):
        spec_from("sd15-character", {"max_train_steps": 60, "save_every_n_steps": 400, "trigger": "mlchar"})
