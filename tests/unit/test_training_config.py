"""Generated sd-scripts files: parsed back with tomllib and compared with the keys sd-scripts 48d368f accepts
(tests/data/sd_scripts/accepted_keys.json, dumped from its own argument parsers and dataset schema)."""

import json
import tomllib
from pathlib import Path

import pytest

from orchestrator.training.core.config import args_toml, command, dataset_toml, sample_prompts_text, toml_value
from orchestrator.training.core.presets import PRESETS, spec_from

ACCEPTED = json.loads((Path(__file__).parent.parent / "data" / "sd_scripts" / "accepted_keys.json").read_text())
MINIMAL = dict(base="sd15", network_dim=4, network_alpha=1, learning_rate=1e-4, max_train_steps=2, resolution=64,
               trigger="tinything")


def args_of(spec, **kw) -> dict:
    opts = dict(pretrained_model="/m/sd15", output_dir="/run/out", logging_dir="/run/logs",
                tokenizer_cache_dir="/tok", sample_prompts_file="/run/prompts.txt") | kw
    parsed = tomllib.loads(args_toml(spec, **opts))
    assert list(parsed) == ["medialab"]  # sd-scripts flattens the sections
    return parsed["medialab"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dataset_toml_has_only_accepted_keys(name):
    spec = PRESETS[name]
    parsed = tomllib.loads(dataset_toml(spec, "/data/img"))
    assert set(parsed) == {"general", "datasets"}
    assert set(parsed["general"]) <= set(ACCEPTED["dataset.general"])
    (ds,) = parsed["datasets"]
    (sub,) = ds.pop("subsets")
    assert set(ds) <= set(ACCEPTED["dataset.datasets"])
    assert set(sub) <= set(ACCEPTED["dataset.subsets"])
    assert sub["image_dir"] == "/data/img" and sub["caption_extension"] == ".txt"
    assert sub["class_tokens"] == spec.trigger and sub["num_repeats"] == spec.num_repeats
    assert ds["resolution"] == spec.resolution and ds["batch_size"] == spec.batch_size
    assert ds["enable_bucket"] is False


def test_buckets():
    spec = spec_from("sdxl-character", {"enable_bucket": True})
    (ds,) = tomllib.loads(dataset_toml(spec, "/d"))["datasets"]
    assert (ds["min_bucket_reso"], ds["max_bucket_reso"], ds["bucket_reso_steps"]) == (512, 2048, 32)
    assert set(ds) - {"subsets"} <= set(ACCEPTED["dataset.datasets"])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_args_toml_has_only_accepted_keys(name):
    spec = PRESETS[name]
    args = args_of(spec)
    assert set(args) <= set(ACCEPTED[spec.script]), set(args) - set(ACCEPTED[spec.script])
    assert args["network_module"] == "networks.lora" and args["save_model_as"] == "safetensors"
    assert args["network_dim"] == 16 and args["network_alpha"] == 8.0 and isinstance(args["network_alpha"], float)
    assert args["pretrained_model_name_or_path"] == "/m/sd15" and args["tokenizer_cache_dir"] == "/tok"
    assert args["sample_prompts"] == "/run/prompts.txt" and args["sample_every_n_steps"] == spec.sample_every_n_steps
    assert args["max_train_steps"] == spec.max_train_steps and "max_train_epochs" not in args
    assert args["training_comment"] == "medialab; trigger: mlchar"


def test_args_values_follow_the_spec():
    sd15 = args_of(PRESETS["sd15-character"])
    assert sd15["text_encoder_lr"] == [5e-5]  # sd-scripts takes a list (nargs="*")
    assert "cache_text_encoder_outputs" not in sd15 and "no_half_vae" not in sd15
    assert sd15["mixed_precision"] == "fp16" and sd15["cache_latents"] is True
    sdxl = args_of(PRESETS["sdxl-character"])
    assert sdxl["cache_text_encoder_outputs"] is True and sdxl["network_train_unet_only"] is True
    assert sdxl["no_half_vae"] is True and "text_encoder_lr" not in sdxl
    minimal = args_of(spec_from(None, {**MINIMAL, "max_data_loader_n_workers": 0}), logging_dir=None,
                      tokenizer_cache_dir=None, sample_prompts_file=None)
    assert "log_with" not in minimal and "tokenizer_cache_dir" not in minimal and "sample_prompts" not in minimal
    assert "persistent_data_loader_workers" not in minimal and minimal["max_data_loader_n_workers"] == 0
    epochs = args_of(spec_from(None, {**MINIMAL, "max_train_steps": None, "max_train_epochs": 3}))
    assert epochs["max_train_epochs"] == 3 and "max_train_steps" not in epochs


@pytest.mark.parametrize("value", ["plain", 'quote " and \\ backslash', "tab\tnew\nline", "ünïcødé ✓ 🎉",
                                   "C:\\path\\x", "", "\x00\x1f"])
def test_toml_strings_round_trip(value):
    assert tomllib.loads(f"k = {toml_value(value)}")["k"] == value


def test_toml_other_values():
    for value in (True, False, 0, -3, 1e-4, 5e-05, 1.0, 123456.75, [1e-5], ["a", "b"]):
        assert tomllib.loads(f"k = {toml_value(value)}")["k"] == value
    with pytest.raises(ValueError):
        toml_value(float("nan"))
    with pytest.raises(TypeError):
        toml_value({"a": 1})


def test_hostile_paths_stay_values(tmp_path):
    weird = '/data/x"\n[evil]\nkey = 1'
    parsed = tomllib.loads(dataset_toml(PRESETS["sd15-character"], weird))
    assert parsed["datasets"][0]["subsets"][0]["image_dir"] == weird and "evil" not in parsed


def test_sample_prompts_file():
    spec = spec_from(None, {**MINIMAL, "sample_prompts": ["{trigger} smiling", "a cat"], "sample_every_n_steps": 1,
                            "seed": 7, "sample_steps": 2})
    assert sample_prompts_text(spec) == ("tinything smiling --w 64 --h 64 --s 2 --d 7 --l 7.5\n"
                                         "a cat --w 64 --h 64 --s 2 --d 7 --l 7.5\n")


def test_command_with_and_without_accelerate():
    spec = PRESETS["sdxl-character"]
    argv = command(spec, sd_scripts_dir="/sd", python="/venv/bin/python", args_file="/r/args.toml",
                   dataset_file="/r/dataset.toml", accelerate=True, cpu=True)
    assert argv[:3] == ["/venv/bin/python", "-m", "accelerate.commands.launch"]
    assert "--cpu" in argv and argv[argv.index("--mixed_precision") + 1] == "no"
    script = argv.index("/sd/sdxl_train_network.py")
    assert argv[script + 1:] == ["--config_file", "/r/args.toml", "--dataset_config", "/r/dataset.toml",
                                 "--mixed_precision", "no"]  # fp16/bf16 do not run on a CPU
    gpu = command(spec, sd_scripts_dir="/sd", python="py", args_file="a", dataset_file="d", accelerate=True)
    assert "--cpu" not in gpu and gpu[gpu.index("--mixed_precision") + 1] == "bf16" and gpu[-1] == "d"
    plain = command(PRESETS["sd15-character"], sd_scripts_dir="/sd", python="py", args_file="a", dataset_file="d",
                    accelerate=False)
    assert plain == ["py", "/sd/train_network.py", "--config_file", "a", "--dataset_config", "d"]
