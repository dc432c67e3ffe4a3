"""LoRA training through kohya sd-scripts: specs and presets, datasets, generated config, progress, the runner."""
