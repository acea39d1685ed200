"""Server-owned session policy (`--session-policy FILE`, YAML or JSON).

Operators pin what an OpenAI session may do, whatever the browser sends: instructions (or a
prefix every instruction starts with), allowed models, a tool allow-list, a maximum of output
tokens, the voice. Rules are given per path and may be refined per client token label:

    paths:
      /openai:                       # translator (Deepgram agent protocol)
        instructions_prefix: "You are the ACME support agent."
        tools: [lookup_order]
        max_output_tokens: 400
        labels:
          kiosk: {voice: marin}
      /openai/v1/realtime:           # raw relay
        models: [gpt-realtime]
        instructions: "Answer in one sentence."

Both engines apply the same function to the `session` object of every `session.update` that
goes upstream; the caller tells the client about each pinned field it tried to change.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from voxgate.config import OPENAI, ConfigError, valid_label
from voxgate.routes import provider_paths

PATHS = provider_paths(OPENAI)  # every OpenAI path -> its route kind
STRING_FIELDS = ("instructions", "instructions_prefix", "voice")
LIST_FIELDS = ("models", "tools")
FIELDS = (*STRING_FIELDS, *LIST_FIELDS, "max_output_tokens")
MAX_FILE_BYTES = 1 << 20


def _check_field(where: str, key: str, value: Any) -> Any:
    """One rule's value, checked; raises ConfigError naming the field."""
    if key in STRING_FIELDS:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"session policy {where}.{key}: expected a non-empty string")
        return value
    if key in LIST_FIELDS:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"session policy {where}.{key}: expected a non-empty list of strings")
        return list(value)
    if key == "max_output_tokens":
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"session policy {where}.max_output_tokens: expected a positive integer")
        return value
    raise ConfigError(f"session policy {where}: unknown field {str(key)[:40]!r} (known: {', '.join(FIELDS)})")


def _check_rules(where: str, rules: Any, *, allow_labels: bool) -> dict[str, Any]:
    if not isinstance(rules, dict):
        raise ConfigError(f"session policy {where}: expected a mapping")
    out: dict[str, Any] = {}
    for key, value in rules.items():
        if key == "labels" and allow_labels:
            if not isinstance(value, dict) or not all(valid_label(k) for k in value):
                raise ConfigError(f"session policy {where}.labels: expected token labels as keys")
            out["labels"] = {k: _check_rules(f"{where}.labels.{k}", v, allow_labels=False) for k, v in value.items()}
        else:
            out[key] = _check_field(where, key, value)
    if "instructions" in out and "instructions_prefix" in out:
        raise ConfigError(f"session policy {where}: use instructions or instructions_prefix, not both")
    return out


def parse_policy(text: str, name: str = "policy") -> dict[str, Any]:
    """Validate a policy document (JSON, or YAML when PyYAML is installed)."""
    stripped = text.lstrip()
    if stripped.startswith("{") or name.endswith(".json"):
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"session policy {name}: invalid JSON ({str(exc).splitlines()[0][:80]})") from None
    else:
        try:
            import yaml
        except ImportError:
            raise ConfigError("session policy: YAML needs PyYAML (pip install pyyaml), or write it as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"session policy {name}: invalid YAML ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(data, dict) or set(data) != {"paths"} or not isinstance(data["paths"], dict):
        raise ConfigError(f"session policy {name}: expected one top-level key 'paths' mapping paths to rules")
    paths = {}
    for path, rules in data["paths"].items():
        if path not in PATHS:
            raise ConfigError(f"session policy {name}: unknown path {str(path)[:60]!r} (known: {', '.join(PATHS)})")
        paths[path] = _check_rules(f"paths.{path}", rules, allow_labels=True)
    return {"paths": paths}


def load_policy(path: str) -> dict[str, Any]:
    """Read and validate `--session-policy FILE`; errors are one line (ConfigError)."""
    try:
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise ConfigError(f"session policy {path}: larger than 1 MiB")
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read session policy {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"session policy {path}: not UTF-8 text") from None
    return parse_policy(text, path)


def rules_for(policy: dict[str, Any] | None, route: str, label: str | None) -> dict[str, Any] | None:
    """The rules of one session: its path's, refined by its token label's; None when none."""
    if not policy:
        return None
    merged: dict[str, Any] = {}
    for path, kind in PATHS.items():
        rules = policy["paths"].get(path)
        if kind == route and rules:
            merged.update({k: v for k, v in rules.items() if k != "labels"})
            if label and label in rules.get("labels", {}):
                merged.update(rules["labels"][label])
    if "instructions" in merged and "instructions_prefix" in merged:
        merged.pop("instructions_prefix")
    return merged or None


def _tool_name(tool: Any) -> str | None:
    if not isinstance(tool, dict):
        return None
    name = tool.get("name") or tool.get("server_label")
    return name if isinstance(name, str) else None


def _pin_instructions(session: dict[str, Any], rules: dict[str, Any], changed: list[str]) -> None:
    pinned = rules.get("instructions")
    if pinned is not None:
        if session.get("instructions") not in (None, "", pinned):
            changed.append("instructions")
        session["instructions"] = pinned
    prefix = rules.get("instructions_prefix")
    if prefix is not None and "instructions" in session:
        text = session["instructions"] if isinstance(session["instructions"], str) else ""
        if not text.startswith(prefix):
            session["instructions"] = f"{prefix}\n\n{text}" if text else prefix


def _pin_model_and_tools(session: dict[str, Any], rules: dict[str, Any], changed: list[str]) -> None:
    models = rules.get("models")
    if models and "model" in session and session["model"] not in models:
        changed.append("model")
        session["model"] = models[0]
    allowed = rules.get("tools")
    if allowed is not None and isinstance(session.get("tools"), list):
        kept = [t for t in session["tools"] if _tool_name(t) in allowed]
        if len(kept) != len(session["tools"]):
            changed.append("tools")
            session["tools"] = kept


def _pin_output_tokens(session: dict[str, Any], rules: dict[str, Any], changed: list[str]) -> None:
    cap = rules.get("max_output_tokens")
    if cap is None:
        return
    key = "max_response_output_tokens" if "max_response_output_tokens" in session else "max_output_tokens"
    value = session.get(key)
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= cap):
        if value is not None:
            changed.append("max_output_tokens")
        session[key] = cap


def _pin_voice(session: dict[str, Any], rules: dict[str, Any], changed: list[str]) -> None:
    voice = rules.get("voice")
    if voice is None:
        return
    if "voice" in session:  # beta shape
        if session["voice"] != voice:
            changed.append("voice")
        session["voice"] = voice
        return
    audio = session.get("audio") if isinstance(session.get("audio"), dict) else {}
    output = audio.get("output") if isinstance(audio.get("output"), dict) else {}
    if output.get("voice") not in (None, voice):
        changed.append("voice")
    output["voice"] = voice
    audio["output"] = output
    session["audio"] = audio


def apply_policy(session: dict[str, Any], rules: dict[str, Any]) -> list[str]:
    """Pin `rules` into a Realtime `session` object in place (GA shape, plus the beta
    `voice`/`max_response_output_tokens` when present); returns the fields the client had
    set to something else."""
    changed: list[str] = []
    for pin in (_pin_instructions, _pin_model_and_tools, _pin_output_tokens, _pin_voice):
        pin(session, rules, changed)
    return changed


def pinned_message(field: str) -> str:
    return f"The gateway's session policy pins {field}; the value sent was replaced."
