"""The chart's dashboard and alerts against a real Prometheus (Debian's `prometheus` package)
scraping a real daemon: every dashboard query and every alert expression (comparison removed)
answers; a bad bundle fires ModeldReloadFailing; the training population keeps the score PSI
low and a shifted population fires ModeldScoreDrift. `promtool check metrics` accepts what the
daemon exports."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from conftest import REPO, Daemon

from modeld_bundle.examples import LABEL, german_credit

sys.path.insert(0, str(REPO / "training"))
from pipelines import split  # noqa: E402

TASK = "credit_risk"
CHART_FILES = REPO / "charts" / "modeld" / "files"
# Grafana's variables, as a user viewing one task would have them.
VARIABLES = {"$__rate_interval": "30s", "$task": TASK}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's prometheus package (apt-get install prometheus)")
    return path


class Prometheus:
    """A Prometheus server scraping `target` every second, evaluating `rules` every second."""

    def __init__(self, workdir: Path, target: str, rules: Path):
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "modeld", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.until(lambda: self._get("/-/ready") is not None, "prometheus ready", timeout=60)

    def _get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                body = r.read()
        except OSError:
            return None
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            return body

    def query(self, expr: str) -> list[dict]:
        answer = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert answer and answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def firing(self) -> list[dict]:
        return [a for a in self._get("/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"]

    def until(self, ready, what: str, timeout: float = 60.0, between=None):
        deadline = time.monotonic() + timeout
        while True:
            result = ready()
            if result:
                return result
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = Path(self.log.name).read_text()[-3000:]
                pytest.fail(f"{what}: not after {timeout} s\n{log}")
            if between:
                between()
            else:
                time.sleep(0.25)  # polling a condition, not timing anything

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.log.close()


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((CHART_FILES / "dashboard.json").read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: a variable is left in {expr}"
            out.append((panel["title"], expr))
    return out


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((CHART_FILES / "alerts.yaml").read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def without_comparison(expr: str) -> str:
    bare = re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.eE+-]+\s*$", "", expr.strip())
    assert bare != expr.strip(), f"no trailing comparison in {expr}"
    return bare


def wire_rows(pb2, frame, schema_fields):
    types = {f["name"]: f["type"] for f in schema_fields}
    rows = []
    for i, record in enumerate(frame.to_dict(orient="records")):
        features = {}
        for name, v in record.items():
            if types.get(name) == "categorical":
                features[name] = pb2.Value(text=str(v))
            elif name in types:
                features[name] = pb2.Value(integer=int(v))
        rows.append(pb2.Row(row_id=f"r{i}", features=features))
    return rows


def shifted(frame):
    """The same applicants with the riskiest checking account, savings and history, and long
    loans: a population the model scores far higher than the one it was trained on."""
    out = frame.copy()
    out["status_of_existing_checking_account"] = "... < 0 DM"
    out["savings_account_and_bonds"] = "... < 100 DM"
    out["credit_history"] = "no credits taken/ all credits paid back duly"
    out["duration_in_month"] = 60
    return out


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, pb):
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(REPO / "models" / TASK / "v2", root / TASK / "v2")
    (root / TASK / "current").symlink_to("v2")
    work = tmp_path_factory.mktemp("monitoring")
    settings = {
        "MODELD_TASKS": TASK,
        "MODELD_DRIFT_WINDOW_SECONDS": "20",
        "MODELD_DRIFT_MIN_ROWS": "300",
        "MODELD_AUDIT_PATH": str(work / "audit.jsonl"),
        "MODELD_AUDIT_SAMPLE": "0",
        "MODELD_POLL_INTERVAL_MS": "200",
    }
    daemon = Daemon(root, settings)
    daemon.wait_serving(pb, [TASK])
    # The rules as shipped, but firing as soon as their expression holds: the test checks the
    # expressions, not the hold times.
    rules = yaml.safe_load((CHART_FILES / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    (work / "rules.yaml").write_text(yaml.safe_dump(rules))
    prometheus = Prometheus(work, daemon.admin, work / "rules.yaml")
    yield root, daemon, prometheus
    prometheus.stop()
    daemon.stop()


def test_promtool_accepts_the_exported_metrics(monitored):
    _, daemon, _ = monitored
    with urllib.request.urlopen(f"http://{daemon.admin}/metrics", timeout=10) as r:
        text = r.read()
    p = subprocess.run([binary("promtool"), "check", "metrics"], input=text, capture_output=True, check=False)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    rules = str(CHART_FILES / "alerts.yaml")
    p = subprocess.run([binary("promtool"), "check", "rules", rules], capture_output=True, check=False)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()


def test_dashboards_answer_alerts_fire_and_drift_is_seen(monitored, pb):
    pb2, stubs = pb
    root, daemon, prometheus = monitored
    fields = yaml.safe_load((REPO / "models" / TASK / "v2" / "feature_schema.yaml").read_text())["fields"]
    x_train, _, _, _ = split(german_credit(), LABEL)
    training = wire_rows(pb2, x_train, fields)
    drifted = wire_rows(pb2, shifted(x_train), fields)
    channel = grpc.insecure_channel(daemon.grpc)
    stub = stubs.InferenceStub(channel)

    def predict(rows):
        for start in range(0, len(rows), 100):
            stub.Predict(pb2.PredictRequest(task=TASK, rows=rows[start : start + 100]))

    # The training population, a refused row, a default, an unknown category and a stream.
    predict(training)
    bad = pb2.Row(row_id="bad", features={**training[0].features, "age_in_years": pb2.Value(integer=7)})
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(pb2.PredictRequest(task=TASK, rows=[bad]))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    unusual = pb2.Row(row_id="unusual", features=dict(training[1].features))
    del unusual.features["telephone"]
    unusual.features["purpose"].text = "space travel"
    predict([unusual])
    chunks = [
        pb2.BatchPredictRequest(task=TASK, rows=training[:50]),
        pb2.BatchPredictRequest(rows=training[50:100]),
    ]
    assert sum(len(c.results) for c in stub.BatchPredict(iter(chunks))) == 100

    # The training population keeps the PSI low (read once the window holds all of it).
    full = f"modeld_score_psi and on (task, version) (modeld_score_window_rows >= {len(training)})"
    psi = prometheus.until(lambda: prometheus.query(full), "the training population's PSI")
    assert float(psi[0]["value"][1]) < 0.1, psi

    # Every dashboard query and every alert expression answers.
    pending = dict.fromkeys(dashboard_queries())
    pending.update({(r["alert"], without_comparison(r["expr"])): None for r in alert_rules()})

    def answered():
        for key in list(pending):
            if prometheus.query(key[1]):
                del pending[key]
        return not pending

    prometheus.until(answered, f"queries with an answer ({len(pending)} left: {list(pending)})")

    # A bad bundle: the load fails, the live version keeps serving, the alert fires.
    shutil.copytree(root / TASK / "v2", root / TASK / "v3")
    (root / TASK / "v3" / "model.onnx").write_bytes(b"not a model")
    (root / TASK / "next").symlink_to("v3")
    (root / TASK / "next").rename(root / TASK / "current")

    def fired(name):
        return lambda: [a for a in prometheus.firing() if a["labels"]["alertname"] == name]

    reload_alerts = prometheus.until(fired("ModeldReloadFailing"), "ModeldReloadFailing firing")
    assert reload_alerts[0]["labels"]["task"] == TASK
    assert len(stub.Predict(pb2.PredictRequest(task=TASK, rows=training[:3])).predictions) == 3

    # A shifted population: the PSI rises past the alert's threshold and the alert fires.
    drift = prometheus.until(
        fired("ModeldScoreDrift"), "ModeldScoreDrift firing", timeout=120, between=lambda: predict(drifted)
    )
    assert drift[0]["labels"]["task"] == TASK and drift[0]["labels"]["version"] == "v2"
    assert float(prometheus.query("modeld_score_psi")[0]["value"][1]) > 0.25
    firing = {a["labels"]["alertname"] for a in prometheus.firing()}
    assert "ModeldNoLiveVersion" not in firing and "ModeldAuditRecordsDropped" not in firing
    channel.close()
