"""`voxgate sessions list|kill`: a small client of a running gateway's admin API (/v1/sessions).

Kept apart from cli.py, which builds and starts the gateway: this only speaks HTTP to one.
Gateway errors are one line (StartupError, exit 1); bad arguments are usage errors (exit 2).
"""

from __future__ import annotations

import click

from voxgate.cli import StartupError


@click.group()
@click.option("--url", envvar="VOXGATE_URL", default="http://127.0.0.1:8080", show_default=True,
              help="Base URL of the gateway.")
@click.option("--admin-token", envvar="VOXGATE_ADMIN_TOKEN", default=None, help="The gateway's --admin-token.")
@click.pass_context
def sessions(ctx: click.Context, url: str, admin_token: str | None) -> None:
    """List or end live sessions through the admin API (/v1/sessions)."""
    if not admin_token:
        raise click.UsageError("--admin-token (or VOXGATE_ADMIN_TOKEN) is required")
    if not url.startswith(("http://", "https://")):
        raise click.UsageError(f"--url must be an http:// or https:// URL, got {url!r}")
    ctx.obj = (url.rstrip("/"), admin_token)


def _admin_call(ctx: click.Context, method: str, path: str, query: dict[str, str | None]) -> dict:
    """One admin API call; gateway errors become one-line StartupErrors (exit 1)."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    base, token = ctx.obj
    params = urllib.parse.urlencode({k: v for k, v in query.items() if v})
    request = urllib.request.Request(
        f"{base}{path}{'?' + params if params else ''}", method=method,
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        try:
            detail = json.loads(err.read()).get("message", "")
        except ValueError:
            detail = ""
        raise StartupError(f"the gateway answered {err.code}{': ' + detail if detail else ''}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StartupError(f"cannot reach the gateway at {base}: {reason}") from None


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def session_table(rows: list[dict]) -> str:
    """The readable table of `voxgate sessions list`."""
    head = ("ID", "PROVIDER", "ROUTE", "CLIENT IP", "TOKEN", "INSTANCE", "AGE s", "AUDIO UP s", "AUDIO DOWN s",
            "TOKENS", "CHARS")
    lines = [head]
    for r in rows:
        usage = r["usage"]
        lines.append((
            r["id"], r["provider"], r["route"], r["client_ip"], r["token_label"] or "-", r.get("instance") or "-",
            f"{r['duration_s']:.1f}",
            _seconds(usage["audio_seconds"]["up"]), _seconds(usage["audio_seconds"]["down"]),
            str(usage["tokens"]["total"]), str(usage["characters"]),
        ))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


@sessions.command("list")
@click.option("--provider", type=click.Choice(["openai", "deepgram"]), default=None)
@click.option("--route", default=None, help="agent, listen, speak, translate or realtime.")
@click.option("--client-ip", default=None)
@click.option("--token-label", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")
@click.pass_context
def sessions_list(ctx: click.Context, provider: str | None, route: str | None, client_ip: str | None,
                  token_label: str | None, as_json: bool) -> None:
    """Live sessions of every worker (of every instance, with --redis-url), oldest first."""
    import json

    body = _admin_call(ctx, "GET", "/v1/sessions",
                       {"provider": provider, "route": route, "client_ip": client_ip, "token_label": token_label})
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(session_table(body["sessions"]))
    click.echo(f"{len(body['sessions'])} live session(s)")


@sessions.command("kill")
@click.argument("session_id", required=False)
@click.option("--client-ip", default=None, help="End every session from this client address.")
@click.option("--token-label", default=None, help="End every session of this client token label.")
@click.option("--provider", type=click.Choice(["openai", "deepgram"]), default=None)
@click.pass_context
def sessions_kill(ctx: click.Context, session_id: str | None, client_ip: str | None, token_label: str | None,
                  provider: str | None) -> None:
    """End one session by id, or every session matching the filters."""
    filters = {"client_ip": client_ip, "token_label": token_label, "provider": provider}
    if session_id and any(filters.values()):
        raise click.UsageError("give a session ID or filters, not both")
    if not session_id and not any(filters.values()):
        raise click.UsageError("give a session ID, --client-ip, --token-label or --provider")
    if session_id:
        if not all(c in "0123456789abcdef" for c in session_id):
            raise click.UsageError(f"not a session id: {session_id[:40]!r}")
        body = _admin_call(ctx, "DELETE", f"/v1/sessions/{session_id}", {})
    else:
        body = _admin_call(ctx, "DELETE", "/v1/sessions", filters)
    click.echo(f"ended {body['ended']} session(s){': ' + ', '.join(body['ids']) if body['ids'] else ''}")
