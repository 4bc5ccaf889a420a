#!/usr/bin/env python3
"""Checks of everything that ships besides the crate: Dockerfile, Helm chart, workflows, scripts.

Run through `make delivery-check`, which installs the pinned tools (deploy/tools-requirements.txt)
into .venv-delivery and builds the release binary first. Usage:

    check_delivery.py MODELD_BINARY

Each check prints one line; the script exits 1 if any failed, after running all of them.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from helm_python import Chart, lint

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "modeld"
BIN = Path(sys.executable).parent
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema at hand.
KUBE_VERSIONS = ["1.30.0", "1.37.0"]
# (name, values files layered in order): the default values and every documented example.
SCENARIOS = [
    ("default", []),
    ("credit_risk", ["values/credit_risk.yaml"]),
    ("credit_risk-canary", ["values/credit_risk.yaml", "values/credit_risk-canary.yaml"]),
    ("credit_risk-volume", ["values/credit_risk-volume.yaml"]),
    ("credit_risk-grpc-only", ["values/credit_risk.yaml", "values/grpc-only.yaml"]),
    ("credit_risk-audit", ["values/credit_risk.yaml", "values/audit.yaml"]),
    ("credit_risk-secure", ["values/credit_risk.yaml", "values/secure.yaml"]),
    ("credit_risk-monitoring", ["values/credit_risk.yaml", "values/monitoring.yaml"]),
]

failures: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f"\n{detail.rstrip()}" if detail and not ok else ""))
    if not ok:
        failures.append(name)


def run(name: str, argv: list[str], **kw) -> None:
    p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, **kw)
    check(name, p.returncode == 0, p.stdout + p.stderr)


def tool(name: str) -> str:
    return str(BIN / name)


def merged_values(files: list[str]) -> dict:
    """Layers values files like repeated `helm -f`: maps merge deeply, everything else replaces."""

    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    values: dict = {}
    for f in files:
        values = merge(values, yaml.safe_load((CHART / f).read_text()) or {})
    return values


def documents(rendered: dict[str, str]) -> list[dict]:
    docs = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def cpu_count(quantity: str) -> int:
    """A CPU quantity rounded up to whole CPUs, as resourceFieldRef with divisor 1 does."""
    q = str(quantity)
    return math.ceil(int(q[:-1]) / 1000) if q.endswith("m") else math.ceil(float(q))


def check_consistency(scenario: str, docs: list[dict]) -> None:
    """What a cluster would only reveal at run time: selectors, ports, grace periods, config."""
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    (modeld,) = [c for c in spec["containers"] if c["name"] == "modeld"]
    env = {e["name"]: e for e in modeld.get("env", [])}
    ports = {p["name"]: p["containerPort"] for p in modeld["ports"]}

    problems = []
    if not selects(deploy["spec"]["selector"]["matchLabels"], labels):
        problems.append("Deployment selector does not match its pod labels")
    for kind in ["Service", "PodDisruptionBudget"]:
        for d in by_kind(docs, kind):
            sel = d["spec"]["selector"]
            sel = sel.get("matchLabels", sel)
            if not selects(sel, labels):
                problems.append(f"{kind} {d['metadata']['name']} does not select the pods")
    services = by_kind(docs, "Service")
    for sm in by_kind(docs, "ServiceMonitor"):
        targets = [s for s in services if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        wanted = {e["port"] for e in sm["spec"]["endpoints"]}
        if not any(wanted <= {p["name"] for p in s["spec"]["ports"]} for s in targets):
            problems.append("ServiceMonitor selects no Service with an admin port")
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] != deploy["metadata"]["name"]:
            problems.append("HPA targets another Deployment")
        if "replicas" in deploy["spec"]:
            problems.append("Deployment sets replicas while an HPA owns them")

    # Probes: grpc.health.v1 on the port modeld listens on.
    grpc_port = int(env["MODELD_GRPC_ADDR"]["value"].rsplit(":", 1)[1])
    if grpc_port != ports["grpc"]:
        problems.append("MODELD_GRPC_ADDR is not the grpc containerPort")
    tls_on = "MODELD_TLS_CERT" in env
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
        if tls_on:
            # The kubelet's gRPC probes speak plaintext: with TLS they must ask the admin port.
            get = modeld.get(probe, {}).get("httpGet", {})
            scheme = "HTTPS" if "MODELD_ADMIN_TLS_CERT" in env else "HTTP"
            if get.get("port") != "admin" or get.get("scheme") != scheme:
                problems.append(f"{probe} is not an {scheme} probe on the admin port while TLS is on")
        elif modeld.get(probe, {}).get("grpc", {}).get("port") != grpc_port:
            problems.append(f"{probe} is not a gRPC probe on the gRPC port")

    # The HTTP/JSON face: when on, modeld listens where the http containerPort and a Service say.
    if env.get("MODELD_HTTP_ENABLED", {}).get("value") == "true":
        http_port = int(env["MODELD_HTTP_ADDR"]["value"].rsplit(":", 1)[1])
        if http_port != ports.get("http"):
            problems.append("MODELD_HTTP_ADDR is not the http containerPort")
        if services and not any("http" in {p["name"] for p in s["spec"]["ports"]} for s in services):
            problems.append("no Service has the http port")
    elif "http" in ports:
        problems.append("an http containerPort while the HTTP/JSON face is off")

    # The audit log: a file lands on a writable volume (the root file system is read-only), and
    # the HMAC key file is on the Secret's mount.
    mounts = {m["mountPath"]: m for m in modeld.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}

    def mount_of(path: str) -> dict | None:
        under = [m for p, m in mounts.items() if path.startswith(p.rstrip("/") + "/")]
        return max(under, key=lambda m: len(m["mountPath"]), default=None)

    audit_path = env.get("MODELD_AUDIT_PATH", {}).get("value")
    if audit_path and audit_path != "-":
        m = mount_of(audit_path)
        if m is None or m.get("readOnly"):
            problems.append("the audit log is not on a writable volume")
    key_file = env.get("MODELD_AUDIT_HMAC_KEY_FILE", {}).get("value")
    if key_file:
        m = mount_of(key_file)
        if m is None or "secret" not in volumes.get(m["name"], {}):
            problems.append("the audit HMAC key file is not on a Secret mount")
    for name in [
        "MODELD_TLS_CERT",
        "MODELD_TLS_KEY",
        "MODELD_TLS_CLIENT_CA",
        "MODELD_ADMIN_TLS_CERT",
        "MODELD_ADMIN_TLS_KEY",
        "MODELD_CALLERS_FILE",
    ]:
        path = env.get(name, {}).get("value")
        if path:
            m = mount_of(path)
            if m is None or "secret" not in volumes.get(m["name"], {}) or "subPath" in m:
                problems.append(f"{name} is not on a whole-Secret mount (renewals would not reach it)")
    for policy in by_kind(docs, "NetworkPolicy"):
        if not selects(policy["spec"]["podSelector"]["matchLabels"], labels):
            problems.append("the NetworkPolicy does not select the pods")
        allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])}
        if not set(ports) <= allowed:
            problems.append(f"the NetworkPolicy leaves ports {sorted(set(ports) - allowed)} closed")
    if env.get("MODELD_AUDIT_REDACT") and not key_file:
        problems.append("audit redaction without an HMAC key file")

    # Shutdown: the kubelet must not kill a pod that is still draining.
    pre_stop = modeld["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = int(env["MODELD_SHUTDOWN_GRACE_MS"]["value"]) / 1000
    if spec["terminationGracePeriodSeconds"] <= pre_stop + drain:
        problems.append("terminationGracePeriodSeconds is not longer than preStop + drain grace")

    # Security: non-root, read-only root file system, nothing escalates, no capabilities.
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c.get("securityContext", {})
        if not (
            sc.get("readOnlyRootFilesystem")
            and sc.get("allowPrivilegeEscalation") is False
            and sc.get("capabilities", {}).get("drop") == ["ALL"]
        ):
            problems.append(f"container {c['name']} is not locked down")
    if not spec["securityContext"].get("runAsNonRoot"):
        problems.append("pod may run as root")

    # Threads follow the CPU limit.
    ref = env["MODELD_INFERENCE_THREADS"].get("valueFrom", {}).get("resourceFieldRef", {})
    if ref.get("resource") != "limits.cpu" or "cpu" not in modeld["resources"].get("limits", {}):
        problems.append("inference threads do not follow a CPU limit")
    check(f"chart {scenario}: selectors, ports, probes, grace, security", not problems, "\n".join(problems))

    # The rendered service.yaml and environment are accepted by `modeld serve`, as the pod runs it.
    (config_map,) = [d for d in by_kind(docs, "ConfigMap") if "service.yaml" in d.get("data", {})]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "service.yaml"
        config.write_text(config_map["data"]["service.yaml"])
        child_env = {"PATH": os.environ.get("PATH", "")}
        for name, e in env.items():
            if "value" in e:
                child_env[name] = e["value"]
            elif e["valueFrom"].get("resourceFieldRef", {}).get("resource") == "limits.cpu":
                child_env[name] = str(cpu_count(modeld["resources"]["limits"]["cpu"]))
        child_env["MODELD_CONFIG"] = str(config)
        child_env["MODELD_MODEL_ROOT"] = str(REPO / "models")
        p = subprocess.run([MODELD, "serve", "--check-config"], env=child_env, capture_output=True, text=True)
        check(f"chart {scenario}: modeld serve --check-config accepts the rendered config", p.returncode == 0, p.stderr)


def check_chart() -> None:
    chart = Chart.load(CHART)
    # values.schema.json: a misspelt key or an unusable task name fails the install.
    for bad in [{"model": {"sourc": "volume"}}, {"task": "../etc"}]:
        try:
            chart.render(bad, name="modeld-credit-risk")
            check(f"values schema rejects {bad}", False, "it rendered")
        except Exception:  # noqa: BLE001 - any refusal counts
            check(f"values schema rejects {bad}", True)
    for scenario, files in SCENARIOS:
        values = merged_values(files)
        report = lint(str(CHART), values or None, strict=True)
        bad = [m for m in report.get("messages", []) if m["severity"] >= 2] + [
            {"error": e} for e in report.get("errors", []) or []
        ]
        check(f"helm lint --strict ({scenario})", not bad, json.dumps(bad, indent=1))
        try:
            rendered = chart.render(values or None, name="modeld-credit-risk", namespace="ml", is_install=True)
        except Exception as e:  # noqa: BLE001 - report any render error as a failed check
            check(f"helm template ({scenario})", False, str(e))
            continue
        check(f"helm template ({scenario})", True)
        docs = documents(rendered)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"{scenario}.yaml"
            out.write_text(yaml.safe_dump_all(docs))
            for version in KUBE_VERSIONS:
                p = subprocess.run(
                    [tool("kubernetes-validate"), "--strict", "-k", version, str(out)], capture_output=True, text=True
                )
                # Only the Prometheus Operator's CRDs have no schema here; checked in check_monitoring.
                unknown = [
                    line
                    for line in p.stdout.splitlines()
                    if "Couldn't find schema" in line and not any(k in line for k in OPERATOR_KINDS)
                ]
                check(
                    f"kubernetes-validate --strict -k {version} ({scenario})",
                    p.returncode == 0 and not unknown,
                    p.stdout + p.stderr,
                )
        check_consistency(scenario, docs)
        check_monitoring(scenario, docs)


OPERATOR_KINDS = ("ServiceMonitor", "PrometheusRule")


def check_monitoring(scenario: str, docs: list[dict]) -> None:
    """The dashboard ConfigMap and the PrometheusRule carry the chart's files unchanged, and the
    rules pass promtool."""
    dashboards = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    for d in dashboards:
        shipped = json.loads((CHART / "files" / "dashboard.json").read_text())
        same = json.loads(d["data"]["modeld.json"]) == shipped
        check(f"dashboard ConfigMap carries files/dashboard.json ({scenario})", same)
        check(f"dashboard ConfigMap has the sidecar label ({scenario})", d["metadata"]["labels"].get("grafana_dashboard") == "1")
    for rule in by_kind(docs, "PrometheusRule"):
        shipped = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
        check(f"PrometheusRule carries files/alerts.yaml ({scenario})", rule["spec"] == shipped)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rules.yaml"
            out.write_text(yaml.safe_dump(rule["spec"]))
            promtool = shutil.which("promtool")
            if promtool is None:
                check(f"promtool check rules ({scenario})", False, "promtool not found (Debian package prometheus)")
                continue
            p = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True, text=True)
            check(f"promtool check rules ({scenario})", p.returncode == 0, p.stdout + p.stderr)


def check_gitops() -> None:
    """Argo CD Applications (no CRD schema here): the chart path and values files they name exist
    and render."""
    for path in sorted(glob.glob("deploy/argocd/*.yaml", root_dir=REPO)):
        app = yaml.safe_load((REPO / path).read_text())
        source = app["spec"]["source"]
        chart_dir = REPO / source["path"]
        files = source.get("helm", {}).get("valueFiles", [])
        missing = [f for f in files if not (chart_dir / f).exists()]
        ok = chart_dir == CHART and not missing
        detail = f"chart {source['path']}, missing values files {missing}"
        if ok:
            try:
                Chart.load(chart_dir).render(merged_values(files) or None, name=source["helm"]["releaseName"])
            except Exception as e:  # noqa: BLE001
                ok, detail = False, str(e)
        check(f"Argo CD application {path} renders", ok, detail)


def main() -> int:
    run("hadolint Dockerfile", [tool("hadolint"), "Dockerfile"])
    shell = [".ci/run", *glob.glob("scripts/*.sh", root_dir=REPO), *glob.glob("deploy/*.sh", root_dir=REPO)]
    shell.append("charts/modeld/files/modeld-sync.sh")
    run("shellcheck", [tool("shellcheck"), "-s", "bash", *shell])
    yaml_files = [
        "charts/modeld/Chart.yaml",
        "charts/modeld/values.yaml",
        *glob.glob("charts/modeld/values/*.yaml", root_dir=REPO),
        *glob.glob(".github/workflows/*.yml", root_dir=REPO),
        *glob.glob("deploy/**/*.yaml", root_dir=REPO, recursive=True),
        "config/service.yaml",
    ]
    run("yamllint", [tool("yamllint"), "--strict", *yaml_files])
    workflows = glob.glob(".github/workflows/*.yml", root_dir=REPO)
    run("actionlint", [tool("actionlint"), "-shellcheck", tool("shellcheck"), *workflows])
    run(
        "GitHub workflow schema",
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *workflows],
    )
    run("GitLab CI schema", [tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", "deploy/gitlab-ci.yml"])
    check_chart()
    check_gitops()
    if failures:
        print(f"\n{len(failures)} delivery check(s) failed: {', '.join(failures)}")
        return 1
    print("\nall delivery checks passed")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    MODELD = sys.argv[1]
    sys.exit(main())
