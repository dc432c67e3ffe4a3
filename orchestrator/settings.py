"""All configuration in one place, read from ``MEDIALAB_*`` environment variables (or a ``.env`` file)."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDIALAB_", env_file=".env", extra="ignore")

    home: Path = Field(Path(".medialab"), description="Folder for the embedded database, storage and worker.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite under home.")
    storage_dir: Path | None = Field(None, description="Local-disk object store; default: home/objects.")
    templates_dir: Path | None = Field(None, description="Template library; default: the packaged one.")

    comfy_servers: list[str] = Field(
        default_factory=list,
        description="ComfyUI base URLs. Empty: start a local ComfyUI worker and stop it on exit.",
    )
    comfy_runtime: Path = Field(PROJECT_ROOT / ".runtime" / "comfyui", description="ComfyUI tree.")
    models_dir: Path = Field(PROJECT_ROOT / ".runtime" / "models", description="Models of the local worker.")
    worker_port: int | None = Field(None, description="Port of the local ComfyUI worker; default: a free one.")
    worker_device: str = Field("auto", description="auto | cpu | gpu for the local worker.")
    worker_start_timeout_s: float = 180.0

    event_timeout_s: float = Field(30.0, description="Silence on the websocket before /history is asked.")
    job_timeout_s: float | None = Field(None, description="Default job timeout when a template sets none.")

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'medialab.db').resolve()}"

    @property
    def objects(self) -> Path:
        return self.storage_dir or self.home / "objects"

    @property
    def templates(self) -> Path:
        if self.templates_dir:
            return self.templates_dir
        from comfy_workflows import LIBRARY_DIR

        return LIBRARY_DIR


@lru_cache
def get_settings() -> Settings:
    return Settings()
