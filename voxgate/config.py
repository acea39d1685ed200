"""Gateway configuration: one immutable `Config`, built once by the CLI and shipped to workers.

The supervisor builds it from click options; each worker receives the non-secret part as JSON
in its environment (`VOXGATE_WORKER_CONFIG`) and its own provider key in the usual variable,
so a worker never sees the other provider's key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

OPENAI = "openai"
DEEPGRAM = "deepgram"
PROVIDERS = (OPENAI, DEEPGRAM)
KEY_VARS = {OPENAI: "OPENAI_API_KEY", DEEPGRAM: "DEEPGRAM_API_KEY"}
NO_KEY_MESSAGE = (
    "At least one of DEEPGRAM_API_KEY or OPENAI_API_KEY is required "
    "(set it in the environment, a .env file, or --openai-key-file/--deepgram-key-file)"
)
WORKER_CONFIG_ENV = "VOXGATE_WORKER_CONFIG"
SECRET_FIELDS = ("openai_key", "deepgram_key", "client_tokens", "token_secret", "admin_token", "redis_url")
LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.@-")


class ConfigError(ValueError):
    """An invalid option value; the CLI prints it as one line and exits 2."""


def valid_label(label: object) -> bool:
    """A client token label: 1-64 of letters, digits and `_.@-` (it shows in logs and APIs)."""
    return isinstance(label, str) and 0 < len(label) <= 64 and set(label) <= LABEL_CHARS


def split_static_token(entry: str, index: int) -> tuple[str, str]:
    """(label, token) of a `--client-token` value: `label:token` names it, a bare token is
    labelled `static-<n>` (its 1-based position), so the label never reveals the token."""
    label, sep, token = entry.partition(":")
    if sep and token and valid_label(label):
        return label, token
    return f"static-{index + 1}", entry


def normalize_key(provider: str, raw: str | None) -> str | None:
    """Blank means absent; Deepgram keys lose a legacy `dgkey_` prefix (P19)."""
    if raw is None:
        return None
    key = raw.strip()
    if not key:
        return None
    if provider == DEEPGRAM and key.startswith("dgkey_"):
        key = key[len("dgkey_") :]
    return key or None


def read_key_file(path: str) -> str:
    """Read a mounted secret; errors never echo the file's content."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None


def check_ws_url(name: str, value: str) -> str:
    """Upstream URLs must be ws:// or wss:// with a host."""
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"{name} must be a ws:// or wss:// URL with a host, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigError(f"{name} has an invalid port: {value!r}") from None
    return value.rstrip("/") if parts.path in ("", "/") else value


@dataclass(frozen=True)
class Config:
    """Everything `serve` needs. Keys are kept out of `to_worker_json`."""

    host: str = "127.0.0.1"
    port: int = 8080
    proxy_path: str = "/deepgram-proxy"
    openai_key: str | None = field(default=None, repr=False)
    deepgram_key: str | None = field(default=None, repr=False)
    openai_realtime_url: str = "wss://api.openai.com/v1/realtime"
    openai_default_model: str = "gpt-realtime"
    deepgram_agent_url: str = "wss://agent.deepgram.com"
    deepgram_api_url: str = "wss://api.deepgram.com"
    workers_per_provider: int = 1
    head_max_bytes: int = 16 * 1024
    head_timeout: float = 10.0
    worker_wait: float = 3.0
    heartbeat_interval: float = 1.0
    worker_timeout: float = 10.0
    grace: float = 30.0
    connect_timeout: float = 10.0
    max_message_bytes: int = 1 << 20
    idle_timeout: float | None = None
    max_session_seconds: float | None = 3600.0
    deepgram_keepalive: float | None = None
    deepgram_synthetic_agent_audio_done: bool = True
    translator_strict: bool = False
    translator_json_passthrough: bool = False
    log_level: str = "info"
    log_format: str = "text"
    allowed_origins: tuple[str, ...] = ()
    client_tokens: tuple[str, ...] = field(default=(), repr=False)
    token_secret: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    max_sessions: int | None = None
    max_sessions_per_ip: int | None = None
    max_new_sessions_per_ip_per_minute: int | None = None
    trust_proxy_headers: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    # budgets of static client tokens (issue 11); minted tokens carry their own
    token_max_sessions: int | None = None
    token_max_session_seconds: float | None = None
    token_max_audio_seconds: float | None = None
    token_max_tokens: int | None = None
    on_session_limit: str = "reject"  # reject | replace-oldest
    session_policy: dict | None = None  # parsed --session-policy (voxgate.policy)
    # scale-out (issue 12): unset redis_url = everything in this process
    redis_url: str | None = field(default=None, repr=False)
    redis_failure: str = "open"  # open | closed
    redis_lease: float = 15.0
    instance_id: str = ""
    demo_page: bool = False

    def secrets(self) -> list[str]:
        """Every secret this config holds, for log scrubbing."""
        tokens = [split_static_token(t, i)[1] for i, t in enumerate(self.client_tokens)]
        values = [self.openai_key, self.deepgram_key, self.token_secret, self.admin_token, *self.client_tokens, *tokens]
        if self.redis_url:
            from urllib.parse import urlsplit

            values += [self.redis_url, urlsplit(self.redis_url).password]
        return [v for v in values if v]

    def key_for(self, provider: str) -> str | None:
        return self.openai_key if provider == OPENAI else self.deepgram_key

    def enabled(self, provider: str) -> bool:
        return self.key_for(provider) is not None

    @property
    def enabled_providers(self) -> tuple[str, ...]:
        return tuple(p for p in PROVIDERS if self.enabled(p))

    def to_worker_json(self) -> str:
        """Non-secret settings for a worker process."""
        data = dataclasses.asdict(self)
        for secret in SECRET_FIELDS:
            data.pop(secret)
        return orjson.dumps(data).decode()

    @classmethod
    def for_worker(cls, provider: str) -> Config:
        """Rebuild the config inside a worker from its environment."""
        data = orjson.loads(os.environ[WORKER_CONFIG_ENV])
        data["allowed_origins"] = tuple(data.get("allowed_origins", ()))
        key = normalize_key(provider, os.environ.get(KEY_VARS[provider]))
        data["openai_key" if provider == OPENAI else "deepgram_key"] = key
        return cls(**data)
