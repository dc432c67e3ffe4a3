"""The error hierarchy. Each error carries its HTTP status; the API maps them in one place (api/problems.py)."""

from typing import Any


class MediaLabError(Exception):
    status = 500
    title = "Internal error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class NotFound(MediaLabError):
    status = 404
    title = "Not found"


class InvalidInput(MediaLabError):
    status = 422
    title = "Invalid input"


class Conflict(MediaLabError):
    status = 409
    title = "Conflict"


class Unauthorized(MediaLabError):
    status = 401
    title = "Unauthorized"


class Forbidden(MediaLabError):
    status = 403
    title = "Forbidden"


class Unavailable(MediaLabError):
    status = 503
    title = "Service unavailable"


class TrainingFailed(MediaLabError):
    """A training run ended without its LoRA; ``extra`` holds the exit code and the log tail."""

    status = 500
    title = "Training failed"


class TooLarge(MediaLabError):
    """Over a limit (a setting): ``extra`` names it, e.g. ``limit="max_image_pixels", value=100000000``."""

    status = 413
    title = "Payload too large"
