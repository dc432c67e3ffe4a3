"""The pipeline library: ``<name>/v<N>/pipeline.json``, one immutable folder per version (docs/pipelines.md)."""

from pathlib import Path

LIBRARY_DIR = Path(__file__).resolve().parent
