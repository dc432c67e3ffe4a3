"""The template library: ``<name>/v<N>/{graph.json,manifest.json}``, one immutable folder per version."""

from pathlib import Path

LIBRARY_DIR = Path(__file__).resolve().parent
