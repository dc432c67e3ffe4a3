"""Media Lab orchestrator: versioned ComfyUI templates run on ComfyUI servers, tracked and stored."""

__version__ = "0.1.0"
