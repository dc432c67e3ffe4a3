"""All configuration in one place, read from ``MEDIALAB_*`` environment variables (or a ``.env`` file)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDIALAB_", env_file=".env", extra="ignore")

    home: Path = Field(Path(".medialab"), description="Folder for the embedded database, storage and worker.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite under home.")
    storage_dir: Path | None = Field(None, description="Local-disk object store; default: home/objects.")
    templates_dir: Path | None = Field(None, description="Template library; default: the packaged one.")
    pipelines_dir: Path | None = Field(None, description="Pipeline library; default: the packaged one.")
    studio_dir: Path = Field(PROJECT_ROOT / "studio" / "dist", description="The built studio (npm run build, "
                             "by scripts/setup.sh), served under /studio; its swagger/ folder serves /docs.")

    storage: str = Field("local", description="local (disk under storage_dir) | s3 (MinIO or any S3).")
    s3_endpoint: str | None = Field(None, description="host:port of the MinIO/S3 server.")
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_bucket: str = "medialab"
    s3_secure: bool = Field(False, description="https to the S3 endpoint.")
    s3_region: str | None = None
    stage_ahead_servers: int = Field(2, ge=0, description="An uploaded input is sent at once, in the background, "
                                     "to the healthy local servers that take inputs by upload when there are at "
                                     "most this many (0: never); a bigger pool gets it when the job is placed.")
    byte_path: str = Field("auto", description="auto | direct | through: how media moves between ComfyUI and "
                           "storage (auto: direct when the server has the node pack and our bucket).")

    comfy_servers: list[str] = Field(
        default_factory=list,
        description="ComfyUI base URLs added to the pool at start (JSON list).",
    )
    servers_file: Path | None = Field(
        None, description="TOML file of servers ([[server]] name, url) added to the pool at start. With no "
        "server in the pool at all, a local ComfyUI worker is started and stopped on exit.")
    replica_id: str | None = Field(None, description="Name of this orchestrator process (default: the host "
                                   "name); its identity is <name>-<pid>-<random>, new for each process lifetime.")
    comfy_runtime: Path = Field(PROJECT_ROOT / ".runtime" / "comfyui", description="ComfyUI tree.")
    models_dir: Path = Field(PROJECT_ROOT / ".runtime" / "models", description="Models of the local worker.")
    worker_port: int | None = Field(None, description="Port of the local ComfyUI worker; default: a free one.")
    worker_device: str = Field("auto", description="auto | cpu | gpu for the local worker.")
    worker_start_timeout_s: float = 180.0

    event_timeout_s: float = Field(30.0, description="Silence on the websocket before /history is asked.")
    job_timeout_s: float | None = Field(None, description="Default job timeout when a template sets none.")
    max_attempts: int = Field(3, ge=1, description="Attempts per job when servers are lost.")
    retry_base_delay_s: float = Field(1.0, description="Backoff before the 2nd attempt; doubles after.")
    max_inflight: int = Field(2, ge=1, description="Prompts per server: one running, the rest queued behind.")
    placement: Literal["affinity", "round_robin"] = Field(
        "affinity", description="affinity: a server holding a job's models takes it ahead of older jobs (within "
        "placement_max_bypass); round_robin: oldest job to the next server in turn (a baseline).")
    placement_max_bypass: int = Field(100, ge=0, description="A job that this many later jobs of its priority "
                                      "started ahead of (warm-model affinity) takes the next free slot anywhere.")
    runner_threads: int = Field(256, ge=1, description="Threads following attempts: one per prompt in flight, so "
                                "at least servers x max_inflight.")
    lease_s: float = Field(30.0, description="An attempt whose orchestrator is silent this long is adopted.")
    health_interval_s: float = 5.0
    refresh_interval_s: float = Field(300.0, description="Capabilities re-read this often (and on recovery).")
    require_lock: bool = Field(False, description="Give a job only to servers whose ComfyUI version and the "
                               "commits of the node packs it needs match worker.lock.toml.")

    # -- burst tiers: managed providers when local GPUs are short (core/burst.py, the README's Burst providers) --
    burst_templates: list[str] = Field(default_factory=list, description="Template names (every version) or "
                                       "name@vN that may burst to a provider (JSON list); empty: nothing bursts.")
    burst_wait_s: float = Field(60.0, ge=0, description="Estimated wait for local capacity above which a job of an "
                                "allowed template bursts.")
    burst_template_wait_s: dict[str, float] = Field(default_factory=dict, description="Per template (name or "
                                                    "name@vN), its own burst_wait_s (JSON object).")
    burst_urgent_priority: int = Field(50, description="Jobs of this priority and above wait only "
                                       "burst_urgent_wait_s for local capacity.")
    burst_urgent_wait_s: float = Field(0.0, ge=0, description="The threshold of urgent jobs.")
    burst_budget_day: float | None = Field(None, ge=0, description="Most burst spend per UTC day (None: no cap).")
    burst_budget_month: float | None = Field(None, ge=0, description="Most burst spend per UTC month.")
    burst_budget_key_day: float | None = Field(None, ge=0, description="Most burst spend per API key per UTC day.")
    burst_default_run_s: float = Field(60.0, gt=0, description="A template's run time for the wait and cost "
                                       "estimates until it has run (then: the mean of its recent runs).")
    burst_poll_s: float = Field(1.0, gt=0, description="How often a burst job's status is asked.")
    burst_unreachable_s: float = Field(60.0, gt=0, description="A provider that does not answer this long about a "
                                       "job it holds is marked down and the job goes back to the local queue.")
    burst_cancel_keep_outputs: bool = Field(False, description="Keep the outputs of a cancelled burst job that the "
                                            "provider ran to the end anyway (its GPU time is counted either way).")
    provider_tokens: dict[str, str] = Field(default_factory=dict, repr=False, description="Bearer tokens by server "
                                            "name (JSON object), sent to that server only; never stored.")

    local_trainer: bool = Field(True, description="serve/run train here too (one local trainer thread) when "
                                "sd_scripts_dir is set; false when remote `medialab trainer` processes train.")
    sd_scripts_dir: Path | None = Field(None, description="kohya sd-scripts checkout (pinned commit).")
    trainer_python: str | None = Field(None, description="Python of sd-scripts' environment; default: "
                                       "<sd_scripts_dir>/.venv/bin/python if it exists, else this one.")
    trainer_accelerate: bool = Field(False, description="Launch sd-scripts through `accelerate launch`.")
    tokenizer_cache_dir: Path | None = Field(None, description="Offline CLIP tokenizer folder for "
                                             "sd-scripts; default: <sd_scripts_dir>/tokenizers if it exists.")
    trainer_lease_s: float = Field(60.0, description="A training claim whose trainer is silent this long is "
                                   "taken back (queued again or failed).")
    shared_models_dir: Path | None = Field(None, description="Models folder every remote pool server lists in "
                                           "its extra_model_paths.yaml; trained LoRAs go to <it>/loras.")
    lora_initial_state: str = Field("approved", description="State of a newly registered LoRA: approved (usable "
                                    "at once) or candidate (needs `medialab models approve`).")

    # -- limits (every refusal is a 4xx problem+json naming the limit and its value) -----------------
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest JSON request body (413 above it).")
    max_upload_bytes: int = Field(8 << 30, ge=1 << 20, description="Largest uploaded file (413 above it).")
    max_image_pixels: int = Field(100_000_000, ge=1, description="Largest image (width x height) accepted as an "
                                  "input; decompression bombs are refused before anything is stored.")
    max_video_seconds: float = Field(3600.0, gt=0, description="Longest video accepted as an input.")
    max_video_frames: int = Field(216_000, ge=1, description="Most frames in a video input.")
    max_video_pixels: int = Field(7680 * 4320, ge=1, description="Largest video frame (width x height).")
    max_params: int = Field(64, ge=1, description="Most parameters (or training options) in one request.")
    max_string_length: int = Field(20_000, ge=1, description="Longest string parameter (prompts).")
    max_name_length: int = Field(128, ge=1, description="Longest name (template, server, key, dataset, tag).")
    max_tags: int = Field(32, ge=1, description="Most tags on one upload.")
    max_batch_items: int = Field(10_000, ge=1, description="Most jobs (items) in one batch.")
    max_frames_per_extract: int = Field(500, ge=1, description="Most frames one extraction from a video may "
                                        "store (POST /v1/artifacts/{id}/frames, a batch's frames source).")
    max_heartbeat_events: int = Field(500, ge=1, description="Most progress events in one trainer heartbeat.")
    max_timeout_s: float = Field(7 * 86400.0, gt=0, description="Largest timeout_s a job may ask for.")

    # -- the API's own costs per request -------------------------------------------------------------
    key_cache_s: float = Field(2.0, ge=0, le=60, description="How long a process trusts an API key it checked "
                               "without reading its row again. A revoke through this process (API or the same "
                               "database engine) counts at once; one by another process (a worker, a replica, "
                               "the CLI) within this time. Expiry is always checked at once. 0: read every time.")

    # -- what a graph may reach (see the README's Security model) --------------------------------------
    url_allowlist: list[str] = Field(default_factory=list, description="Origins (scheme://host[:port]) whose "
                                     "http(s) URLs may be given as media inputs, e.g. the platform's screenshot "
                                     "server; the object store's own presigned URLs are always allowed.")
    url_private_ok: bool = Field(False, description="Allowlisted origins may resolve to private or loopback "
                                 "addresses (an internal screenshot server); link-local never is.")
    url_max_bytes: int = Field(2 << 30, ge=1, description="Largest file fetched from a URL input.")
    url_timeout_s: float = Field(60.0, gt=0, description="Time limit for fetching a URL input.")
    import_roots: list[str] = Field(default_factory=list, description="Folders the service may import inputs "
                                    "from (POST /v1/imports, medialab import): a folder or file is allowed only if "
                                    "its real path (symlinks followed) is inside one of them; empty: no folder "
                                    "import. URLs to import follow url_allowlist and url_private_ok.")

    # -- the CLI as a client of a running service (medialab submit); the service itself never reads these --
    url: str | None = Field(None, description="The service the CLI talks to (default http://127.0.0.1:8000, or "
                            "a profile's url).")
    api_key: str | None = Field(None, repr=False, description="The API key the CLI sends (or a profile's "
                                "api_key).")
    profile: str | None = Field(None, description="Profile of config_file to connect with (--profile wins).")
    config_file: Path | None = Field(None, description="The CLI's profiles ([profiles.<name>] url, api_key); "
                                     "default: ~/.config/medialab/config.toml.")

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

    @property
    def pipelines(self) -> Path:
        if self.pipelines_dir:
            return self.pipelines_dir
        from comfy_pipelines import LIBRARY_DIR

        return LIBRARY_DIR


@lru_cache
def get_settings() -> Settings:
    return Settings()
