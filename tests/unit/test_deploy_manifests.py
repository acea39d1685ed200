"""The deploy/ examples must match the gateway they deploy: probe paths, ports, env var names,
drain timing, and the wiring Service -> container and Ingress -> Service. A typo in any of
these only shows up in production (a pod that never turns ready, a setting silently ignored)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest

yaml = pytest.importorskip("yaml")

from voxgate import cli as voxgate_cli  # noqa: E402
from voxgate.routes import RESERVED_PATHS  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "kubernetes"
EXTRA_VARS = {"OPENAI_API_KEY", "DEEPGRAM_API_KEY", "SKIP_DOTENV"}


def cli_env_vars() -> set[str]:
    """Every environment variable `voxgate serve` reads."""
    names = set(EXTRA_VARS)
    for param in voxgate_cli.serve.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            names.add(envvar)
        elif envvar:
            names.update(envvar)
    return names


def serve_default(name: str):
    return next(p.default for p in voxgate_cli.serve.params if p.name == name)


def load_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        with path.open(encoding="utf-8") as fh:
            docs.extend(doc for doc in yaml.safe_load_all(fh) if doc is not None)
    return docs


def the(kind: str) -> dict:
    found = [d for d in load_docs() if d.get("kind") == kind]
    if len(found) > 1:  # the gateway's own, next to Redis's (redis.yaml)
        found = [d for d in found if d["metadata"]["name"] == "voxgate"]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container() -> dict:
    containers = the("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def container_env() -> dict[str, dict]:
    return {e["name"]: e for e in container().get("env", [])}


def resolve_port(port, ports: list[dict]) -> int:
    """A numeric port, or the number behind a named one."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in ports if "name" in p}
    assert port in named, f"port name {port!r} is not one of {sorted(named)}"
    return named[port]


def parse_dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for the final stage, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    logical, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in logical]
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for op, args in parse_dockerfile():
        if op == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


# -- everything parses ---------------------------------------------------------------------


def test_every_manifest_parses_and_names_its_kind():
    docs = load_docs()
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "Ingress", "PodDisruptionBudget"} <= kinds
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind")
    assert parse_dockerfile()[0][0] == "FROM"


# -- env var names are real ----------------------------------------------------------------


def test_every_env_var_the_manifests_set_is_read_by_the_cli():
    known = cli_env_vars()
    set_by_k8s = set(container_env())
    set_by_image = set(dockerfile_env())
    assert set_by_k8s and set_by_image
    assert set_by_k8s - known == set(), "Deployment sets variables voxgate never reads"
    assert set_by_image - known == set(), "Dockerfile sets variables voxgate never reads"


def test_keys_come_from_a_secret_never_inline():
    env = container_env()
    for name in ("OPENAI_API_KEY", "DEEPGRAM_API_KEY"):
        assert "value" not in env[name]
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] and ref["key"]
    image_env = dockerfile_env()
    assert not {"OPENAI_API_KEY", "DEEPGRAM_API_KEY"} & set(image_env)


# -- ports and probes ----------------------------------------------------------------------


def test_container_port_is_the_port_the_env_sets_and_binds_all_interfaces():
    c, env = container(), container_env()
    port = int(env["VOXGATE_PORT"]["value"])
    assert [p["containerPort"] for p in c["ports"]] == [port]
    assert env["VOXGATE_HOST"]["value"] == "0.0.0.0"
    image_env = dockerfile_env()
    assert image_env["VOXGATE_HOST"] == "0.0.0.0"
    exposed = [args.split()[0].split("/")[0] for op, args in parse_dockerfile() if op == "EXPOSE"]
    assert exposed == [image_env.get("VOXGATE_PORT", str(serve_default("port")))] == [str(port)]


def test_probes_hit_the_gateway_health_endpoints_on_its_port():
    c = container()
    port = int(container_env()["VOXGATE_PORT"]["value"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert resolve_port(c[probe]["httpGet"]["port"], c["ports"]) == port
    assert {"/readyz", "/healthz"} <= set(RESERVED_PATHS)


def test_prestop_runs_before_drain_and_the_kubelet_waits_longer_than_both():
    pod = the("Deployment")["spec"]["template"]["spec"]
    pre_stop = container()["lifecycle"]["preStop"]
    if "exec" in pre_stop:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep"
        sleep = float(command[1])
    else:
        sleep = float(pre_stop["sleep"]["seconds"])
    assert sleep > 0
    grace = float(container_env().get("VOXGATE_GRACE", {}).get("value", serve_default("grace")))
    assert pod["terminationGracePeriodSeconds"] > sleep + grace


def test_pod_runs_as_non_root_with_limits():
    pod = the("Deployment")["spec"]["template"]["spec"]
    c = container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])


# -- wiring --------------------------------------------------------------------------------


def test_service_selects_the_pods_and_targets_the_container_port():
    svc, dep = the("Service"), the("Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    port = int(container_env()["VOXGATE_PORT"]["value"])
    for sp in svc["spec"]["ports"]:
        assert resolve_port(sp["targetPort"], container()["ports"]) == port


def test_ingress_routes_to_the_service_with_websocket_timeouts():
    ing, svc = the("Ingress"), the("Service")
    service_ports = {p.get("name") for p in svc["spec"]["ports"]} | {p["port"] for p in svc["spec"]["ports"]}
    backends = [
        path["backend"]["service"]
        for rule in ing["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert backends
    for backend in backends:
        assert backend["name"] == svc["metadata"]["name"]
        port = backend["port"].get("name", backend["port"].get("number"))
        assert port in service_ports
    notes = ing["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600
    paths = {path["path"] for rule in ing["spec"]["rules"] for path in rule["http"]["paths"]}
    assert {"/openai", serve_default("proxy_path")} <= paths
    assert "/metrics" not in paths


def test_pdb_covers_the_deployment_pods():
    pdb, dep = the("PodDisruptionBudget"), the("Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


# -- the image -----------------------------------------------------------------------------


def test_dockerfile_runs_as_non_root_and_health_checks_healthz():
    final = parse_dockerfile()
    assert final[0][1].split()[0] == "python:3.11-slim"
    users = [args.strip() for op, args in final if op == "USER"]
    assert users, "no USER in the final stage"
    assert users[-1].split(":")[0] not in ("root", "0")
    checks = [args for op, args in final if op == "HEALTHCHECK"]
    assert len(checks) == 1
    command = checks[0].split("CMD", 1)[1].strip()
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    assert "/healthz" in argv[2] and "urllib" in argv[2]
    compile(argv[2], "<healthcheck>", "exec")
    cmd = [json.loads(args) for op, args in final if op == "CMD"]
    assert cmd[-1] == ["voxgate", "serve"]
    assert any(op == "RUN" and re.search(r"pip install", args) for op, args in final)


def test_the_image_command_is_a_real_cli_command():
    assert isinstance(voxgate_cli.cli.commands.get("serve"), click.Command)


# -- scale-out: Redis, the autoscaler, compose + HAProxy (issue 12) -------------------------


def test_deployment_points_at_the_redis_the_manifests_run():
    env = container_env()
    url = env["VOXGATE_REDIS_URL"]["value"]
    svc = next(d for d in load_docs() if d["kind"] == "Service" and d["metadata"]["name"] == "voxgate-redis")
    sts = next(d for d in load_docs() if d["kind"] == "StatefulSet")
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    assert host == svc["metadata"]["name"] and int(port) == svc["spec"]["ports"][0]["port"]
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert env["VOXGATE_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["VOXGATE_REDIS_FAILURE"]["value"] in serve_choices("redis_failure")
    kustomized = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))["resources"]
    assert {"redis.yaml", "hpa.yaml"} <= set(kustomized)


def serve_choices(name: str) -> list[str]:
    return list(next(p.type.choices for p in voxgate_cli.serve.params if p.name == name))


def test_autoscaler_scales_the_deployment_on_a_metric_the_gateway_exports():
    from voxgate.supervisor.metrics import Metrics

    hpa = the("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == the("Deployment")["metadata"]["name"]
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    exported = Metrics().render({}).decode()
    for name in names:
        assert f"# TYPE {name} gauge" in exported, f"{name} is not an exported gauge"


def test_compose_runs_three_instances_on_one_redis_behind_the_tests_haproxy_config():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    gateways = {name: svc for name, svc in services.items() if name.startswith("voxgate-")}
    assert len(gateways) == 3
    known = cli_env_vars()
    for svc in gateways.values():
        env = svc["environment"]
        assert env["VOXGATE_REDIS_URL"].startswith("redis://redis:")
        assert set(env) - known == set(), "compose sets variables voxgate never reads"
    ids = {svc["environment"]["VOXGATE_INSTANCE_ID"] for svc in gateways.values()}
    assert len(ids) == 3
    proxy = services["haproxy"]
    source = proxy["volumes"][0].split(":")[0]
    assert (DEPLOY / source).resolve() == (DEPLOY / "haproxy" / "haproxy.cfg").resolve()
    backends = {proxy["environment"][f"VOXGATE_{x}"].split(":")[0] for x in "ABC"}
    assert backends == set(gateways)
    cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text(encoding="utf-8")
    for var in ("HAPROXY_BIND", "VOXGATE_A", "VOXGATE_B", "VOXGATE_C"):
        assert f'"${{{var}}}"' in cfg
    assert "balance roundrobin" in cfg and "timeout tunnel" in cfg
