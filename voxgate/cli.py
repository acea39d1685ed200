"""The `voxgate` command line: serve, check, simulate.

Every option has a flag and an environment variable. Errors are one line on stderr: exit 2
for a bad option value, exit 1 when the gateway cannot start (no key, port taken).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from voxgate import __version__, logs
from voxgate.config import (
    DEEPGRAM,
    KEY_VARS,
    NO_KEY_MESSAGE,
    OPENAI,
    Config,
    ConfigError,
    check_ws_url,
    normalize_key,
    read_key_file,
)
from voxgate.policy import load_policy
from voxgate.routes import check_proxy_path
from voxgate.supervisor.routing import Router


class StartupError(Exception):
    """The gateway cannot start; printed as one line, exit 1."""


def _split_list(values: tuple[str, ...]) -> tuple[str, ...]:
    """Repeatable options also accept comma-separated values (the env var form)."""
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


def _float_or_off(value: Any) -> float | None:
    return None if value in (None, 0, 0.0) else float(value)


GATEWAY_OPTIONS: list[Callable] = [
    click.option("--host", envvar="VOXGATE_HOST", default="127.0.0.1", show_default=True,
                 help="Interface to bind."),
    click.option("--port", envvar=["VOXGATE_PORT", "PROXY_PORT"], type=click.IntRange(0, 65535),
                 default=8080, show_default=True, help="TCP port for every path (0 = any free port)."),
    click.option("--proxy-path", envvar="PROXY_PATH", default="/deepgram-proxy", show_default=True,
                 help="WebSocket path of the Deepgram passthrough."),
    click.option("--env-file", envvar="VOXGATE_ENV_FILE", default=None,
                 help="dotenv file to read (default: .env in the working directory when present; "
                      "the real environment wins; SKIP_DOTENV=1 disables)."),
    click.option("--openai-key-file", envvar="VOXGATE_OPENAI_KEY_FILE", default=None,
                 help="File holding the OpenAI key (instead of OPENAI_API_KEY)."),
    click.option("--deepgram-key-file", envvar="VOXGATE_DEEPGRAM_KEY_FILE", default=None,
                 help="File holding the Deepgram key (instead of DEEPGRAM_API_KEY)."),
    click.option("--openai-realtime-url", envvar="OPENAI_REALTIME_URL",
                 default="wss://api.openai.com/v1/realtime", show_default=True,
                 help="OpenAI Realtime WebSocket URL (a ?model= in it sets the default model)."),
    click.option("--deepgram-agent-url", envvar="DEEPGRAM_AGENT_URL", default="wss://agent.deepgram.com",
                 show_default=True, help="Deepgram Voice Agent base URL (/v1/agent/converse appended)."),
    click.option("--deepgram-api-url", envvar="DEEPGRAM_API_URL", default="wss://api.deepgram.com",
                 show_default=True, help="Deepgram API base URL (/v1/listen, /v1/speak, /v2/listen, /v2/speak appended)."),
    click.option("--workers-per-provider", envvar="VOXGATE_WORKERS_PER_PROVIDER", type=click.IntRange(1, 64),
                 default=1, show_default=True, help="Worker processes per provider."),
    click.option("--connect-timeout", envvar="VOXGATE_CONNECT_TIMEOUT", type=click.FloatRange(0.1, 300),
                 default=10.0, show_default=True, help="Upstream connect + handshake timeout, seconds."),
    click.option("--max-message-bytes", envvar="VOXGATE_MAX_MESSAGE_BYTES", type=click.IntRange(1024, 64 << 20),
                 default=1 << 20, show_default=True, help="Largest client message; larger closes with 1009."),
    click.option("--idle-timeout", envvar="VOXGATE_IDLE_TIMEOUT", type=click.FloatRange(0, 86400),
                 default=300.0, show_default=True,
                 help="Close a session whose client sent nothing for this long (0 = off; never on listen)."),
    click.option("--max-session-seconds", envvar="VOXGATE_MAX_SESSION_SECONDS", type=click.FloatRange(0, 86400 * 7),
                 default=3600.0, show_default=True, help="Longest session (0 = unlimited)."),
    click.option("--head-timeout", envvar="VOXGATE_HEAD_TIMEOUT", type=click.FloatRange(0.1, 300),
                 default=10.0, show_default=True, help="Seconds to receive a request head (else 408)."),
    click.option("--head-max-bytes", envvar="VOXGATE_HEAD_MAX_BYTES", type=click.IntRange(1024, 1 << 20),
                 default=16384, show_default=True, help="Largest request head (else 431)."),
    click.option("--worker-wait", envvar="VOXGATE_WORKER_WAIT", type=click.FloatRange(0, 60), default=3.0,
                 show_default=True, help="How long a new session waits for a restarting worker (then 503)."),
    click.option("--grace", envvar="VOXGATE_GRACE", type=click.FloatRange(0, 3600), default=30.0,
                 show_default=True, help="Seconds sessions may finish after SIGTERM before 1001."),
    click.option("--worker-timeout", envvar="VOXGATE_WORKER_TIMEOUT", type=click.FloatRange(0.5, 600),
                 default=10.0, show_default=True, help="Kill and respawn a worker silent this long."),
    click.option("--deepgram-keepalive", envvar="VOXGATE_DEEPGRAM_KEEPALIVE", type=click.FloatRange(0, 60),
                 default=0.0, show_default=True,
                 help="Send KeepAlive upstream on listen after this many silent seconds (0 = off)."),
    click.option("--deepgram-synthetic-agent-audio-done/--no-deepgram-synthetic-agent-audio-done",
                 envvar="VOXGATE_DEEPGRAM_SYNTHETIC_AGENT_AUDIO_DONE", default=True, show_default=True,
                 help="Inject AgentAudioDone after the first assistant ConversationText that follows audio."),
    click.option("--translator-strict/--no-translator-strict", envvar="VOXGATE_TRANSLATOR_STRICT",
                 default=False, show_default=True,
                 help="/openai accepts only Settings, InjectUserMessage, FunctionCallResponse."),
    click.option("--allowed-origin", "allowed_origins", envvar="VOXGATE_ALLOWED_ORIGINS", multiple=True,
                 callback=lambda ctx, param, value: _split_list(value),
                 help="Origin allowed to open sessions (repeatable; env: comma-separated). Unset: any origin."),
    click.option("--client-token", "client_tokens", envvar="VOXGATE_CLIENT_TOKENS", multiple=True,
                 callback=lambda ctx, param, value: _split_list(value),
                 help="Static client token, optionally `label:token` (repeatable; env: comma-separated). Any set: every session needs one."),
    click.option("--token-secret", envvar="VOXGATE_TOKEN_SECRET", default=None,
                 help="HMAC secret for short-lived signed tokens minted by POST /v1/tokens."),
    click.option("--admin-token", envvar="VOXGATE_ADMIN_TOKEN", default=None,
                 help="Bearer token of the admin API: POST /v1/tokens, /v1/realtime/client_secrets, /v1/sessions."),
    click.option("--token-max-sessions", envvar="VOXGATE_TOKEN_MAX_SESSIONS", type=click.IntRange(1), default=None,
                 help="Concurrent sessions per static client token (over it: 429, or see --on-session-limit)."),
    click.option("--token-max-session-seconds", envvar="VOXGATE_TOKEN_MAX_SESSION_SECONDS",
                 type=click.FloatRange(1, 86400 * 7), default=None,
                 help="Longest session of a static client token (then Error budget_exhausted, 1008)."),
    click.option("--token-max-audio-seconds", envvar="VOXGATE_TOKEN_MAX_AUDIO_SECONDS",
                 type=click.FloatRange(1), default=None,
                 help="Audio seconds (both directions) a static client token may use while the gateway runs."),
    click.option("--token-max-tokens", envvar="VOXGATE_TOKEN_MAX_TOKENS", type=click.IntRange(1), default=None,
                 help="OpenAI tokens (response.done totals) a static client token may use while the gateway runs."),
    click.option("--on-session-limit", envvar="VOXGATE_ON_SESSION_LIMIT",
                 type=click.Choice(["reject", "replace-oldest"]), default="reject", show_default=True,
                 help="A token at its max sessions: refuse the new session (429) or end its oldest (Error replaced)."),
    click.option("--session-policy", envvar="VOXGATE_SESSION_POLICY", default=None,
                 help="YAML or JSON file pinning instructions, models, tools, max output tokens, voice per path."),
    click.option("--max-sessions", envvar="VOXGATE_MAX_SESSIONS", type=click.IntRange(1), default=None,
                 help="Global session cap (over it: 503 + Retry-After)."),
    click.option("--max-sessions-per-ip", envvar="VOXGATE_MAX_SESSIONS_PER_IP", type=click.IntRange(1), default=None,
                 help="Concurrent sessions per client IP (over it: 429)."),
    click.option("--max-new-sessions-per-ip-per-minute", envvar="VOXGATE_MAX_NEW_SESSIONS_PER_IP_PER_MINUTE",
                 type=click.IntRange(1), default=None, help="New sessions per client IP per minute (token bucket; 429)."),
    click.option("--redis-url", envvar="VOXGATE_REDIS_URL", default=None,
                 help="Redis shared by every instance: limits, budgets, sessions, revocations (unset: in-process)."),
    click.option("--redis-failure", envvar="VOXGATE_REDIS_FAILURE", type=click.Choice(["open", "closed"]),
                 default="open", show_default=True,
                 help="Redis unreachable: admit with per-instance limits (open) or answer 503 (closed)."),
    click.option("--redis-lease", envvar="VOXGATE_REDIS_LEASE", type=click.FloatRange(1, 600), default=15.0,
                 show_default=True, help="Seconds a crashed instance's sessions keep their shared slots."),
    click.option("--instance-id", envvar="VOXGATE_INSTANCE_ID", default=None,
                 help="This instance's name in the shared session list (default: host name and PID)."),
    click.option("--trust-proxy-headers/--no-trust-proxy-headers", envvar="VOXGATE_TRUST_PROXY_HEADERS",
                 default=False, show_default=True,
                 help="Take the client IP from the last X-Forwarded-For hop (only behind your own proxy)."),
    click.option("--tls-cert", envvar="VOXGATE_TLS_CERT", default=None,
                 help="PEM certificate chain: serve https/wss on the same port (needs --tls-key)."),
    click.option("--tls-key", envvar="VOXGATE_TLS_KEY", default=None, help="PEM private key for --tls-cert."),
    click.option("--demo-page/--no-demo-page", envvar="VOXGATE_DEMO_PAGE", default=False, show_default=True,
                 help="Serve the browser page at / (voxgate demo always does)."),
    click.option("--log-level", envvar=["VOXGATE_LOG_LEVEL", "LOG_LEVEL"],
                 type=click.Choice(logs.LEVELS, case_sensitive=False), default="info", show_default=True,
                 help="Least severe log level written (debug adds per-session detail; never keys or tokens)."),
    click.option("--log-format", envvar="VOXGATE_LOG_FORMAT", type=click.Choice(["auto", "text", "json"]),
                 default="auto", show_default=True,
                 help="Log lines as text or JSON; auto = text on a terminal, JSON otherwise."),
]


def gateway_options(func: Callable) -> Callable:
    for option in reversed(GATEWAY_OPTIONS):
        func = option(func)
    return func


def load_env_file(argv: list[str]) -> None:
    """Load the dotenv file before options are parsed, so it can feed them (P29)."""
    if os.environ.get("SKIP_DOTENV", "").strip().lower() in ("1", "true", "yes", "on"):
        return
    path = os.environ.get("VOXGATE_ENV_FILE")
    for i, arg in enumerate(argv):
        if arg == "--env-file" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--env-file="):
            path = arg.split("=", 1)[1]
    explicit = path is not None
    path = path or ".env"
    if not os.path.isfile(path):
        if explicit:
            raise click.UsageError(f"--env-file {path}: no such file")
        return
    from dotenv import load_dotenv

    load_dotenv(path, override=False)


def _key(provider: str, key_file: str | None) -> str | None:
    raw = read_key_file(key_file) if key_file else os.environ.get(KEY_VARS[provider])
    return normalize_key(provider, raw)


def build_config(opts: dict[str, Any]) -> Config:
    """Validate options into a Config; raises ConfigError with a one-line message."""
    check_tls(opts["tls_cert"], opts["tls_key"])
    if opts["token_secret"] and not opts["admin_token"]:
        raise ConfigError("--token-secret needs --admin-token (it authorizes POST /v1/tokens)")
    return Config(
        host=opts["host"],
        port=opts["port"],
        proxy_path=check_proxy_path(opts["proxy_path"]),
        openai_key=_key(OPENAI, opts["openai_key_file"]),
        deepgram_key=_key(DEEPGRAM, opts["deepgram_key_file"]),
        openai_realtime_url=check_ws_url("OPENAI_REALTIME_URL", opts["openai_realtime_url"]),
        deepgram_agent_url=check_ws_url("DEEPGRAM_AGENT_URL", opts["deepgram_agent_url"]),
        deepgram_api_url=check_ws_url("DEEPGRAM_API_URL", opts["deepgram_api_url"]),
        workers_per_provider=opts["workers_per_provider"],
        connect_timeout=opts["connect_timeout"],
        max_message_bytes=opts["max_message_bytes"],
        idle_timeout=_float_or_off(opts["idle_timeout"]),
        max_session_seconds=_float_or_off(opts["max_session_seconds"]),
        grace=opts["grace"],
        head_timeout=opts["head_timeout"],
        worker_wait=opts["worker_wait"],
        head_max_bytes=opts["head_max_bytes"],
        worker_timeout=opts["worker_timeout"],
        deepgram_keepalive=_float_or_off(opts["deepgram_keepalive"]),
        deepgram_synthetic_agent_audio_done=opts["deepgram_synthetic_agent_audio_done"],
        translator_strict=opts["translator_strict"],
        translator_json_passthrough=_env_flag("VOXGATE_TRANSLATOR_CLIENT_JSON_PASSTHROUGH")
        or _env_flag("OPENAI_PROXY_CLIENT_JSON_PASSTHROUGH"),
        allowed_origins=opts["allowed_origins"],
        client_tokens=opts["client_tokens"],
        token_secret=(opts["token_secret"] or "").strip() or None,
        admin_token=(opts["admin_token"] or "").strip() or None,
        max_sessions=opts["max_sessions"],
        max_sessions_per_ip=opts["max_sessions_per_ip"],
        max_new_sessions_per_ip_per_minute=opts["max_new_sessions_per_ip_per_minute"],
        trust_proxy_headers=opts["trust_proxy_headers"],
        tls_cert=opts["tls_cert"],
        tls_key=opts["tls_key"],
        demo_page=opts["demo_page"],
        token_max_sessions=opts["token_max_sessions"],
        token_max_session_seconds=opts["token_max_session_seconds"],
        token_max_audio_seconds=opts["token_max_audio_seconds"],
        token_max_tokens=opts["token_max_tokens"],
        on_session_limit=opts["on_session_limit"],
        redis_url=check_redis_url(opts["redis_url"]),
        redis_failure=opts["redis_failure"],
        redis_lease=opts["redis_lease"],
        instance_id=check_instance_id(opts["instance_id"]),
        session_policy=load_policy(opts["session_policy"]) if opts["session_policy"] else None,
        log_level=opts["log_level"].lower(),
        log_format=resolve_log_format(opts["log_format"]),
    )


def check_redis_url(url: str | None) -> str | None:
    """A redis:// (or rediss://, unix://) URL, or None for in-process state."""
    url = (url or "").strip()
    if not url:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("--redis-url must start with redis://, rediss:// or unix://")
    from redis.connection import parse_url

    try:
        parse_url(url)
    except ValueError:
        raise ConfigError("--redis-url is not a valid Redis URL (redis://[:password@]host:port/db)") from None
    return url


def check_instance_id(value: str | None) -> str:
    import socket

    value = (value or "").strip() or f"{socket.gethostname()}-{os.getpid()}"
    if len(value) > 128 or not all(c.isalnum() or c in "._-" for c in value):
        raise ConfigError("--instance-id must be 1-128 letters, digits or ._-")
    return value


def check_tls(cert: str | None, key: str | None) -> None:
    """Both PEM files or neither, and they must load."""
    if not cert and not key:
        return
    if not (cert and key):
        raise ConfigError("--tls-cert and --tls-key go together")
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate/key: {getattr(exc, 'strerror', None) or exc.__class__.__name__}") from None


def resolve_log_format(choice: str) -> str:
    if choice != "auto":
        return choice
    return "text" if sys.stderr.isatty() else "json"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def public_url(config: Config, path: str, *, tls: bool = False) -> str:
    host = config.host
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"{'wss' if tls else 'ws'}://{host}:{config.port}{path}"


def page_url(config: Config, *, tls: bool = False) -> str:
    """The browser page's http(s) URL (served at / with --demo-page)."""
    return "http" + public_url(config, "/", tls=tls)[2:]


def endpoints(config: Config, *, tls: bool = False) -> list[dict[str, str]]:
    """P22: every endpoint with its URL, state (live or off, and why) and description."""
    rows = []
    for path, route, description in Router(config.proxy_path).endpoints():
        live = config.enabled(route.provider)
        rows.append({
            "url": public_url(config, path, tls=tls),
            "state": "live" if live else "off",
            "reason": "" if live else f"{KEY_VARS[route.provider]} not set",
            "description": description,
        })
    return rows


def endpoint_text(row: dict[str, str]) -> str:
    state = f"off ({row['reason']})" if row["state"] == "off" else row["state"]
    return f"endpoint {row['url']} {state} - {row['description']}"


def endpoint_lines(config: Config, *, tls: bool = False) -> list[str]:
    """P22: one text line per endpoint."""
    return [endpoint_text(row) for row in endpoints(config, tls=tls)]


def startup_notes(config: Config) -> list[str]:
    notes = []
    if not config.allowed_origins:
        notes.append("note: any origin may connect (set --allowed-origin to restrict)")
    if not (config.client_tokens or config.token_secret):
        notes.append("note: client authentication is off: anyone who reaches this port can open sessions "
                     "(set --client-token or --token-secret)")
    for provider in (OPENAI, DEEPGRAM):
        var = KEY_VARS[provider]
        if not config.enabled(provider) and os.environ.get(f"VITE_{var}"):
            notes.append(f"note: VITE_{var} is set but ignored (frontend-only); set {var} instead")
    if config.deepgram_key and len(config.deepgram_key) < 40 and not config.deepgram_key.startswith("test"):
        notes.append("warning: DEEPGRAM_API_KEY looks too short (Deepgram keys have 40+ characters)")
    return notes


async def _serve(config: Config, log: logs.EventLog) -> None:
    import trio

    from voxgate.supervisor.server import Supervisor

    try:
        listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    port = listeners[0].socket.getsockname()[1]
    if port != config.port:
        import dataclasses

        config = dataclasses.replace(config, port=port)
    supervisor = Supervisor(config, log)
    supervisor.port = port
    for line in startup_output(config, port):
        click.echo(line)
    sys.stdout.flush()
    await supervisor.run(listeners)


def startup_output(config: Config, port: int) -> list[str]:
    """The stdout lines of a started gateway: notes, endpoints, then the listening line. In
    JSON mode each is one JSON object (the text kept as `message`, so a `listening on` match
    still works), so that a pipeline can parse every line."""
    listening = f"voxgate {__version__} listening on {config.host}:{port} (pid {os.getpid()})"
    page = f"page {page_url(config, tls=bool(config.tls_cert))} - browser page (talk through any path)"
    pages = [page] if config.demo_page else []
    if config.log_format != "json":
        return [*startup_notes(config), *endpoint_lines(config, tls=bool(config.tls_cert)), *pages, listening]
    lines = []
    for note in startup_notes(config):
        level, _, text = note.partition(": ")
        lines.append(logs.json_line("supervisor", "warning" if level == "warning" else "info", "note", message=text))
    for row in endpoints(config, tls=bool(config.tls_cert)):
        lines.append(logs.json_line("supervisor", "info", "endpoint", **row, message=endpoint_text(row)))
    for text in pages:
        lines.append(logs.json_line("supervisor", "info", "page", url=page_url(config, tls=bool(config.tls_cert)), message=text))
    lines.append(
        logs.json_line(
            "supervisor", "info", "listening", host=config.host, port=port, pid=os.getpid(),
            version=__version__, tls=bool(config.tls_cert), message=listening,
        )
    )
    return lines


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="voxgate")
def cli() -> None:
    """voxgate: OpenAI Realtime and Deepgram behind one port, keys kept on the server."""


@cli.command()
@gateway_options
def serve(**opts: Any) -> None:
    """Run the gateway: supervisor on one port, one worker process per provider."""
    import trio

    config = build_config(opts)
    if not config.enabled_providers:
        raise StartupError(NO_KEY_MESSAGE)
    for secret in config.secrets():
        logs.register_secret(secret)
    log = logs.setup("supervisor", level=config.log_level, fmt=config.log_format)
    trio.run(_serve, config, log)


def describe(config: Config) -> list[str]:
    """What `serve` would do with this configuration (never a key or token)."""
    tls = bool(config.tls_cert)
    lines = [f"listen {'https' if tls else 'http'}://{config.host}:{config.port}"]
    lines += endpoint_lines(config, tls=tls)
    lines += [
        f"upstream openai {config.openai_realtime_url}",
        f"upstream deepgram agent {config.deepgram_agent_url.rstrip('/')}/v1/agent/converse",
        f"upstream deepgram api {config.deepgram_api_url.rstrip('/')}{{/v1,/v2}}/{{listen,speak}}",
        f"workers {config.workers_per_provider} per provider, restart backoff 0.1s..10s, "
        f"hung after {config.worker_timeout:g}s, drain grace {config.grace:g}s",
        f"limits head {config.head_max_bytes}B/{config.head_timeout:g}s, message {config.max_message_bytes}B, "
        f"idle {_off(config.idle_timeout)}, session {_off(config.max_session_seconds)}, "
        f"connect timeout {config.connect_timeout:g}s",
        f"admission origins {', '.join(config.allowed_origins) or 'any'}; client tokens "
        f"{len(config.client_tokens)} static{', signed (POST /v1/tokens)' if config.token_secret else ''}; "
        f"caps global {config.max_sessions or 'none'}, per-ip {config.max_sessions_per_ip or 'none'}, "
        f"per-ip/min {config.max_new_sessions_per_ip_per_minute or 'none'}"
        f"{', client IP from X-Forwarded-For' if config.trust_proxy_headers else ''}",
        f"budgets per static token: sessions {config.token_max_sessions or 'unlimited'} "
        f"({config.on_session_limit}), session {_off(config.token_max_session_seconds)}, "
        f"audio {_off(config.token_max_audio_seconds)}, tokens {config.token_max_tokens or 'unlimited'}; "
        f"session policy {'on for ' + ', '.join(config.session_policy['paths']) if config.session_policy else 'off'}",
        "shared state " + (
            f"on Redis as instance {config.instance_id} (lease {config.redis_lease:g}s, "
            f"redis failure {config.redis_failure})" if config.redis_url else "in-process (no --redis-url)"
        ),
    ]
    return [*startup_notes(config), *lines]


def _off(seconds: float | None) -> str:
    return "off" if seconds is None else f"{seconds:g}s"


@cli.command()
@gateway_options
def check(**opts: Any) -> None:
    """Validate the configuration and print what `serve` would do, without starting."""
    config = build_config(opts)
    if not config.enabled_providers:
        raise StartupError(NO_KEY_MESSAGE)
    for line in describe(config):
        click.echo(line)
    click.echo("configuration ok")


def options_table() -> str:
    """The README's option table, generated from the `serve` command so it cannot drift."""
    rows = ["| option | environment | default | what it does |", "|---|---|---|---|"]
    for param in serve.params:
        if not isinstance(param, click.Option):
            continue
        flags = " / ".join(f"`{f}`" for f in param.opts + param.secondary_opts)
        envvars = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
        env = ", ".join(f"`{e}`" for e in envvars if e)
        default = param.default
        if not isinstance(default, str | int | float | tuple | list):
            default = None  # click's "no default" sentinel of multiple options is not a value
        if isinstance(default, tuple | list):
            default = ", ".join(default) or None
        shown = "" if default in (None, "") else f"`{default}`"
        helptext = (param.help or "").replace("|", "\\|")
        rows.append(f"| {flags} | {env} | {shown} | {helptext} |")
    return "\n".join(rows)


@cli.command("options-table", hidden=True)
def options_table_command() -> None:
    """Print the README option table (markdown)."""
    click.echo(options_table())


@cli.group()
def simulate() -> None:
    """Run a simulated upstream (for tests, demos and benchmarks)."""


def _simulator_command(name: str) -> Callable:
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True)
    @click.option("--key", envvar=f"VOXGATE_SIMULATE_{name.upper()}_KEY", default="sim-key", show_default=True,
                  help="The API key the simulator expects.")
    def command(host: str, port: int, key: str) -> None:
        import importlib

        import trio

        module = importlib.import_module(f"voxgate.simulate.{name}.server")
        trio.run(module.run, host, port, key)

    command.__doc__ = f"Simulated {name} upstream."
    return command


simulate.command("openai")(_simulator_command("openai"))
simulate.command("deepgram")(_simulator_command("deepgram"))


def _register_subcommands() -> None:
    from voxgate.demo import demo
    from voxgate.sessions_cli import sessions

    cli.add_command(demo)
    cli.add_command(sessions)
    try:
        from voxgate.bench.cli import bench
    except ImportError:  # numpy-free or trimmed installs
        return
    cli.add_command(bench)


_register_subcommands()


def _log_format_of(args: list[str]) -> str:
    """The log format `serve` would use with these arguments (before click has parsed them),
    so that its errors are JSON too when its logs are."""
    if "serve" not in args:
        return "text"
    choice = os.environ.get("VOXGATE_LOG_FORMAT", "auto")
    for i, arg in enumerate(args):
        if arg == "--log-format" and i + 1 < len(args):
            choice = args[i + 1]
        elif arg.startswith("--log-format="):
            choice = arg.partition("=")[2]
    return resolve_log_format(choice) if choice in ("auto", "text", "json") else "text"


def _error(message: str, args: list[str]) -> None:
    if _log_format_of(args) == "json":
        click.echo(logs.json_line("voxgate", "error", "error", message=message), err=True)
    else:
        click.echo(f"voxgate: error: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors, never a traceback."""
    args = sys.argv[1:] if argv is None else argv
    try:
        load_env_file(args)
        cli.main(args=args, prog_name="voxgate", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as exc:
        _error(exc.format_message(), args)
        sys.exit(2)
    except ConfigError as exc:
        _error(str(exc), args)
        sys.exit(2)
    except StartupError as exc:
        _error(str(exc), args)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)
