"""The Helm chart in deploy/helm/pgwarden renders to the objects operators rely on (real Helm when installed, else a minimal renderer)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/pgwarden"
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
# The chart's defaults plus the one value an install must give (deploy/README.md): the primary.
VALUES = {**DEFAULTS, "config": {**DEFAULTS["config"], "primary": {"host": "postgres.db.svc", "port": 5432}}}
TAG = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _lookup(expr: str, scope: dict):
    """A value: `.Values.a.b`, `.Release.Name`, `$var` or `$var.a`."""
    head, *rest = expr.lstrip(".").split(".") if not expr.startswith("$") else expr.split(".")
    value = scope[head]
    for part in rest:
        value = value[part]
    return value


def _pipeline(expr: str, scope: dict) -> str:
    """`X`, `toYaml X | nindent N`, `X | toYaml | nindent N`, `X | nindent N`: the few forms the templates use."""
    stages = [s.strip() for s in expr.split("|")]
    first = stages.pop(0)
    value = _lookup(first.split()[1], scope) if first.startswith("toYaml ") else _lookup(first, scope)
    if first.startswith("toYaml "):
        value = yaml.safe_dump(value, sort_keys=False).rstrip("\n") if value else ""
    for stage in stages:
        if stage == "toYaml":
            value = yaml.safe_dump(value, sort_keys=False).rstrip("\n") if value else ""
        elif stage.startswith("nindent "):
            pad = " " * int(stage.split()[1])
            value = "\n" + "\n".join(pad + line if line else line for line in str(value).rstrip("\n").split("\n"))
        else:
            raise AssertionError(f"the minimal renderer does not know `{stage}`: keep templates simple")
    return str(value)


def render_minimal(text: str, values: dict, release: str = "demo") -> str:
    """Renders the subset of Go templates the chart uses: values, if/range/end, toYaml and nindent."""
    tokens, pos = [], 0
    for m in TAG.finditer(text):
        literal = text[pos : m.start()]
        if m.group(1):
            literal = literal.rstrip(" \t\n")
        if tokens and tokens[-1][0] == "trim":
            tokens.pop()
            literal = literal.lstrip(" \t\n")
        tokens.append(("text", literal))
        tokens.append(("tag", m.group(2)))
        if m.group(3):
            tokens.append(("trim", ""))
        pos = m.end()
    tail = text[pos:]
    if tokens and tokens[-1][0] == "trim":
        tokens.pop()
        tail = tail.lstrip(" \t\n")
    tokens.append(("text", tail))

    def block(i: int, scope: dict) -> tuple[str, int]:
        out = []
        while i < len(tokens):
            kind, body = tokens[i]
            if kind == "text":
                out.append(body)
                i += 1
            elif body == "end":
                return "".join(out), i + 1
            elif m := re.fullmatch(r'\$\w+ := required "([^"]*)" (\S+)', body):
                if _lookup(m.group(2), scope) in (None, ""):
                    raise RenderError(m.group(1))
                i += 1
            elif body.startswith("if "):
                inner, j = block(i + 1, scope)
                out.append(inner if _lookup(body[3:].strip(), scope) else "")
                i = j
            elif body.startswith("range "):
                m = re.fullmatch(r"range \$(\w+), \$(\w+) := (\S+)", body)
                assert m, body
                items = _lookup(m.group(3), scope) or {}
                j = None
                for key, value in items.items():
                    inner, j = block(i + 1, {**scope, "$" + m.group(1): key, "$" + m.group(2): value})
                    out.append(inner)
                i = j if j is not None else _skip(i + 1)
            else:
                out.append(_pipeline(body, scope))
                i += 1
        return "".join(out), i

    def _skip(i: int) -> int:
        depth = 0
        while True:
            body = tokens[i][1] if tokens[i][0] == "tag" else ""
            if body.startswith(("if ", "range ")):
                depth += 1
            elif body == "end":
                if depth == 0:
                    return i + 1
                depth -= 1
            i += 1

    rendered, _ = block(0, {"Values": values, "Release": {"Name": release}})
    return rendered


class RenderError(Exception):
    """The chart refused these values (a `required` value is missing)."""


def _helm() -> str | None:
    return shutil.which("helm")


def _helm_sdk():
    """Helm's own Go SDK through ctypes (`pip install helm-python-sdk`), or None."""
    try:
        import helm_python
    except ImportError:
        return None
    return helm_python


def render(values: dict) -> list[dict]:
    """Every object the chart renders with these values: the helm binary, else Helm's SDK, else the minimal renderer."""
    helm, sdk = _helm(), _helm_sdk()
    if helm:
        values_file = Path("/tmp") / f"pgwarden-test-values-{os.getpid()}.yaml"
        values_file.write_text(yaml.safe_dump(values))
        result = subprocess.run(
            [helm, "template", "demo", str(CHART), "-f", str(values_file)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RenderError(result.stderr)
        return [d for d in yaml.safe_load_all(result.stdout) if d]
    if sdk is not None:
        try:
            with sdk.Chart.load(str(CHART)) as chart:
                manifests = chart.render(values, name="demo", namespace="default")
        except sdk.HelmError as exc:
            raise RenderError(str(exc)) from exc
        return [d for text in manifests.values() for d in yaml.safe_load_all(text) if d]
    docs = []
    for template in sorted((CHART / "templates").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(render_minimal(template.read_text(), values)) if d]
    return docs


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def test_default_values_render_the_expected_kinds():
    kinds = by_kind(render(VALUES))
    assert sorted(kinds) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]
    assert len(kinds["ConfigMap"]) == 2


def test_servicemonitor_behind_a_switch_scrapes_metrics_on_the_http_port():
    values = {**VALUES, "serviceMonitor": {"enabled": True, "interval": "15s"}}
    (monitor,) = by_kind(render(values))["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]


def test_deployment_probes_ports_args_and_security_context():
    (deployment,) = by_kind(render(VALUES))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"{VALUES['image']['repository']}:{VALUES['image']['tag']}"
    assert container["args"] == ["run", "--config", "/etc/pgwarden/pgwarden.yaml"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"postgres": 6432, "http": 9187}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"] == VALUES["resources"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container["envFrom"] == [{"secretRef": {"name": "demo-pgwarden"}}]
    assert pod["terminationGracePeriodSeconds"] > VALUES["config"]["shutdown_timeout"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels


def test_service_exposes_both_ports_and_selects_the_pods():
    kinds = by_kind(render(VALUES))
    (service,) = kinds["Service"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"postgres": 6432, "http": 9187}
    labels = kinds["Deployment"][0]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_configmap_holds_a_config_pgwarden_accepts_and_the_policy_files(tmp_path):
    from proxy.config.model import parse_config

    policy = "# a policy\nversion: 1\n"
    values = {**VALUES, "policies": {"shop.yaml": policy}}
    maps = {m["metadata"]["name"]: m for m in by_kind(render(values))["ConfigMap"]}
    config_text = maps["demo-pgwarden"]["data"]["pgwarden.yaml"]
    assert yaml.safe_load(config_text) == VALUES["config"]
    parse_config(yaml.safe_load(config_text), tmp_path / "pgwarden.yaml", config_text)
    assert maps["demo-pgwarden-policies"]["data"] == {"shop.yaml": policy}


def test_secret_carries_the_env_vars_the_config_names():
    (secret,) = by_kind(render(VALUES))["Secret"]
    config = VALUES["config"]
    named = {u["password_env"] for u in config["auth"]["users"].values()} | {config["backend_auth"]["password_env"]}
    assert named <= set(secret["stringData"])


def test_the_chart_depends_on_no_other_chart():
    """Stock `helm install` refuses a chart whose declared dependency is not vendored in charts/."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert not chart.get("dependencies") and not (CHART / "charts").exists()
    assert "redis" not in DEFAULTS and not (CHART / "requirements.yaml").exists()


def test_the_primary_is_required_and_reaches_the_config():
    with pytest.raises(RenderError, match="config.primary.host is required"):
        render(DEFAULTS)
    values = {**VALUES, "config": {**VALUES["config"], "primary": {"host": "db.prod.svc", "port": 6543}}}
    maps = {m["metadata"]["name"]: m for m in by_kind(render(values))["ConfigMap"]}
    config = yaml.safe_load(maps["demo-pgwarden"]["data"]["pgwarden.yaml"])
    assert config["primary"] == {"host": "db.prod.svc", "port": 6543}
    assert config["listen"]["host"] == "0.0.0.0" and config["http"]["host"] == "0.0.0.0"


def test_extra_environment_variables_reach_the_container():
    env = [
        {"name": "PGWARDEN__POOL__SIZE", "value": "40"},
        {"name": "PGWARDEN_BACKEND_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}},
    ]
    (deployment,) = by_kind(render({**VALUES, "env": env}))["Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["env"] == env
    (default,) = by_kind(render(VALUES))["Deployment"]
    assert "env" not in default["spec"]["template"]["spec"]["containers"][0]


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
users: [{name: none, user: {token: none}}]
"""


def test_helm_install_dry_run_succeeds_offline():
    """What `helm install demo deploy/helm/pgwarden --set config.primary.host=... --dry-run=client` does."""
    sdk = _helm_sdk()
    if sdk is None:
        pytest.skip("Helm's SDK is not installed (pip install helm-python-sdk)")
    config = sdk.Config(kubeconfig_content=KUBECONFIG, namespace="default", storage_driver="memory")
    try:
        release = config.install(str(CHART), "demo", {"config": {"primary": {"host": "db"}}}, dry_run="client")
    finally:
        config.close()
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(release["manifest"]) if d)
    assert kinds == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]


def test_helm_lint_finds_no_error_or_warning():
    sdk = _helm_sdk()
    if sdk is None:
        pytest.skip("Helm's SDK is not installed (pip install helm-python-sdk)")
    result = sdk.lint(str(CHART), values={"config": {"primary": {"host": "db"}}})
    problems = [m for m in result["messages"] if m["severity"] >= 2]  # 1 is INFO (e.g. "icon is recommended")
    assert not result["errors"] and not problems, result


def test_minimal_renderer_trims_and_indents_like_helm():
    text = "a:\n  {{- toYaml .Values.x | nindent 2 }}\n{{- if .Values.off }}\nno\n{{- end }}\n"
    assert render_minimal(text, {"x": {"k": 1}, "off": False}) == "a:\n  k: 1\n"


def test_every_chart_file_opens_with_a_purpose_comment():
    for path in [CHART / "Chart.yaml", CHART / "values.yaml", *(CHART / "templates").glob("*.yaml")]:
        assert path.read_text().startswith("# "), path


def test_kubeconform_accepts_the_rendered_objects(tmp_path):
    kubeconform = shutil.which("kubeconform")
    if kubeconform is None:
        pytest.skip("kubeconform is not installed (not in this machine's apt, PyPI or npm)")
    out = tmp_path / "all.yaml"
    out.write_text(yaml.safe_dump_all(render(VALUES)))
    result = subprocess.run([kubeconform, "-strict", "-summary", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
