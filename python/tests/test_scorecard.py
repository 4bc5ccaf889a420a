"""Scorecards from optbinning, exported and served by a real daemon: every German Credit row's
probability, score and reason codes against the library's own, over gRPC (unary and streamed),
HTTP/JSON and the Open Inference Protocol."""

from __future__ import annotations

import json
import math
import shutil
import urllib.request
import warnings

import grpc
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import Daemon, modeld, reseal
from optbinning import BinningProcess, Scorecard
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from modeld_bundle import ExportError, export
from modeld_bundle.examples import LABEL, german_credit

REASONS = 3
SPECIAL = -1


def data():
    """All 1,000 rows with some gaps and special codes: missing, special and unseen values must
    land where the library puts them."""
    df = german_credit()
    y = (df.pop(LABEL) == "bad").astype(int)
    df["credit_amount"] = df["credit_amount"].astype(float)
    df["age_in_years"] = df["age_in_years"].astype(float)
    rng = np.random.default_rng(7)
    df.loc[rng.choice(len(df), 40, replace=False), "credit_amount"] = SPECIAL
    df.loc[rng.choice(len(df), 30, replace=False), "age_in_years"] = np.nan
    df["purpose"] = df["purpose"].astype(object)
    df.loc[rng.choice(len(df), 25, replace=False), "purpose"] = None
    return df, y


def fitted_scorecard(x, y):
    names = list(x.columns)
    cats = [c for c in names if not pd.api.types.is_numeric_dtype(x[c])]
    bp = BinningProcess(names, categorical_variables=cats, special_codes=[SPECIAL])
    card = Scorecard(
        binning_process=bp,
        estimator=LogisticRegression(max_iter=2000),
        scaling_method="pdo_odds",
        scaling_method_params={"pdo": 20, "odds": 50, "scorecard_points": 600},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Empirical WoE for the special and missing bins: they have counts here.
        card.fit(x, y, metric_special="empirical", metric_missing="empirical")
    return card


def fitted_pipeline(x, y):
    names = list(x.columns)
    cats = [c for c in names if not pd.api.types.is_numeric_dtype(x[c])]
    model = Pipeline(
        [
            ("binning", BinningProcess(names, categorical_variables=cats)),
            ("lr", LogisticRegression(max_iter=2000)),
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y)
    return model


@pytest.fixture(scope="module")
def served(tmp_path_factory, pb):
    x, y = data()
    root = tmp_path_factory.mktemp("cards")
    card = fitted_scorecard(x, y)
    pipe = fitted_pipeline(x, y)
    reports = {}
    for task, model in (("card", card), ("binned", pipe)):
        reports[task] = export(
            model, x, root / task / "v1", task=task, version="v1", class_labels=["good", "bad"]
        )
        (root / task / "current").symlink_to("v1")
    daemon = Daemon(root)
    daemon.wait_serving(pb, ["card", "binned"])
    yield root, daemon, x, card, pipe, reports
    daemon.stop()


def wire_rows(pb2, x, schema_fields):
    types = {f["name"]: f["type"] for f in schema_fields}
    rows = []
    for i, rec in enumerate(x.to_dict("records")):
        features = {}
        for name, v in rec.items():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            t = types.get(name)
            if t == "integer":
                features[name] = pb2.Value(integer=int(v))
            elif t == "number":
                features[name] = pb2.Value(number=float(v))
            elif t == "categorical":
                features[name] = pb2.Value(text=str(v))
        rows.append(pb2.Row(row_id=f"r{i}", features=features))
    return rows


def reference_reasons(card, x, n):
    """Reason codes from the library's own points table and bin indices: fields ranked by points
    lost against the field's best bin, ties in variable order, fields that lost nothing left out."""
    bp = card.binning_process_
    table = card.table(style="detailed")
    names = [str(v) for v in bp.get_support(names=True)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idx = bp.transform(
            x[list(bp.variable_names)],
            metric="indices",
            metric_special="empirical",
            metric_missing="empirical",
        )
    out = []
    for r in range(len(x)):
        lost = []
        for k, name in enumerate(names):
            points = table[table.Variable == name].Points.to_numpy()
            got = points[int(idx[name].iloc[r])]
            loss = points.max() - got
            if loss > 0:
                lost.append((-loss, k, name, got, points.max()))
        lost.sort(key=lambda t: (t[0], t[1]))
        out.append([(name, got, best) for _, _, name, got, best in lost[:n]])
    return out


def schema_of(root, task):
    return yaml.safe_load((root / task / "v1" / "feature_schema.yaml").read_text())


def test_every_row_scores_like_optbinning(served, pb):
    pb2, stubs = pb
    root, daemon, x, card, _, reports = served
    assert reports["card"].kind == "scorecard"
    assert "PASS" in modeld("validate", str(root / "card" / "v1")).stdout
    fields = schema_of(root, "card")["fields"]
    # The drift baseline is the sample's points, the score modeld watches on a scorecard.
    baseline = json.loads((root / "card" / "v1" / "evaluation.json").read_text())["score_baseline"]
    assert baseline["score"] == "points"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Edges are rounded to 9 places: the extremes are clipped in, as modeld counts them.
        edges = baseline["edges"]
        counts, _ = np.histogram(np.clip(card.score(x), edges[0], edges[-1]), bins=edges)
    assert counts.tolist() == baseline["counts"] and counts.sum() == len(x)
    x = x.copy()
    x.loc[x.index[::97], "purpose"] = "never-seen"  # optbinning scores unseen categories too
    rows = wire_rows(pb2, x, fields)
    served_rows = []
    with grpc.insecure_channel(daemon.grpc) as channel:
        stub = stubs.InferenceStub(channel)
        for start in range(0, len(rows), 100):
            reply = stub.Predict(
                pb2.PredictRequest(task="card", rows=rows[start : start + 100], reason_codes=REASONS)
            )
            served_rows.extend(reply.predictions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proba = card.predict_proba(x)
        score = card.score(x)
    assert len(served_rows) == len(x) == 1000
    got_p = np.array([list(p.probabilities) for p in served_rows])
    assert np.abs(got_p - proba).max() <= 1e-5
    got_s = np.array([p.score for p in served_rows])
    assert all(p.HasField("score") for p in served_rows)
    assert np.abs(got_s - score).max() <= 1e-6
    reference = reference_reasons(card, x, REASONS)
    for p, want in zip(served_rows, reference, strict=True):
        got = [(r.field, r.points, r.best_points) for r in p.reasons]
        assert [g[0] for g in got] == [w[0] for w in want], p.row_id
        assert np.allclose([g[1:] for g in got], [w[1:] for w in want], atol=1e-9, rtol=0) or not want


def test_edges_land_where_optbinning_puts_them(served, pb):
    """Each numeric edge, and the value just below it, gets the library's bin (hence its score)."""
    pb2, stubs = pb
    root, daemon, x, card, _, _ = served
    fields = schema_of(root, "card")["fields"]
    base = x.iloc[[0]]
    probes = []
    for f in fields:
        if f["type"] == "categorical":
            continue
        for e in f["bins"]["edges"]:
            for v in (
                (e, float(np.nextafter(e, -np.inf)))
                if f["type"] == "number"
                else (math.ceil(e), math.ceil(e) - 1)
            ):
                row = base.copy()
                row[f["name"]] = v
                probes.append(row)
    frame = pd.concat(probes, ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = card.score(frame)
    with grpc.insecure_channel(daemon.grpc) as channel:
        reply = stubs.InferenceStub(channel).Predict(
            pb2.PredictRequest(task="card", rows=wire_rows(pb2, frame, fields))
        )
    assert len(probes) > 10
    assert np.abs(np.array([p.score for p in reply.predictions]) - want).max() <= 1e-6


def test_streams_http_and_v2_carry_score_and_reasons(served, pb):
    pb2, stubs = pb
    root, daemon, x, card, _, _ = served
    fields = schema_of(root, "card")["fields"]
    sample = x.head(50)
    rows = wire_rows(pb2, sample, fields)
    with grpc.insecure_channel(daemon.grpc) as channel:
        stub = stubs.InferenceStub(channel)
        unary = stub.Predict(pb2.PredictRequest(task="card", rows=rows, reason_codes=2)).predictions
        chunks = [
            pb2.BatchPredictRequest(task="card", rows=rows[:25], reason_codes=2),
            pb2.BatchPredictRequest(rows=rows[25:]),
        ]
        streamed = [r.prediction for answer in stub.BatchPredict(iter(chunks)) for r in answer.results]
        plain = stub.Predict(pb2.PredictRequest(task="card", rows=rows[:1])).predictions[0]
    assert plain.HasField("score") and not plain.reasons, "reason codes only when asked for"
    assert [(p.score, list(p.reasons)) for p in streamed] == [(p.score, list(p.reasons)) for p in unary]
    assert all(len(p.reasons) <= 2 for p in unary) and any(len(p.reasons) == 2 for p in unary)

    json_rows = [
        {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in r.features.items()}
        for r in rows[:3]
    ]
    body = json.dumps({"rows": json_rows, "reason_codes": 2}).encode()
    request = urllib.request.Request(
        f"http://{daemon.http}/v1/tasks/card/predict", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    for got, want in zip(answer["predictions"], unary[:3], strict=True):
        assert abs(got["score"] - want.score) <= 1e-9
        assert [r["field"] for r in got["reasons"]] == [r.field for r in want.reasons]
        assert [r["bin"] for r in got["reasons"]] == [r.bin for r in want.reasons]

    inputs = []
    for f in fields:
        values = [r.get(f["name"]) for r in json_rows]
        datatype = {"integer": "INT64", "number": "FP64", "categorical": "BYTES"}[f["type"]]
        inputs.append({"name": f["name"], "shape": [3], "datatype": datatype, "data": values})
    body = json.dumps({"inputs": inputs}).encode()
    request = urllib.request.Request(
        f"http://{daemon.http}/v2/models/card/infer", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        outputs = {o["name"]: o for o in json.load(response)["outputs"]}
    assert outputs["score"]["datatype"] == "FP64"
    assert np.allclose(outputs["score"]["data"], [p.score for p in unary[:3]], atol=1e-9)


def test_binned_pipeline_serves_probabilities_without_points(served, pb):
    pb2, stubs = pb
    root, daemon, x, _, pipe, reports = served
    assert reports["binned"].kind == "classifier"
    fields = schema_of(root, "binned")["fields"]
    assert all(f["encoding"] == "binned" and "points" not in f["bins"] for f in fields)
    rows = wire_rows(pb2, x.head(200), fields)
    with grpc.insecure_channel(daemon.grpc) as channel:
        reply = stubs.InferenceStub(channel).Predict(
            pb2.PredictRequest(task="binned", rows=rows, reason_codes=3)
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = pipe.predict_proba(x.head(200))
    got = np.array([list(p.probabilities) for p in reply.predictions])
    assert np.abs(got - want).max() <= 1e-5
    assert not any(p.HasField("score") or p.reasons for p in reply.predictions)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda b: b.update(edges=list(reversed(b["edges"]))), "bin edges must ascend strictly"),
        (lambda b: b.update(woe=b["woe"][:-1]), "woe values for"),
        (lambda b: b.update(points=b["points"] + [1.0]), "points values for"),
    ],
)
def test_bad_bin_tables_fail_at_load_naming_the_field(served, tmp_path, edit, words):
    root = served[0]
    bundle = tmp_path / "v1"
    shutil.copytree(root / "card" / "v1", bundle)
    schema = yaml.safe_load((bundle / "feature_schema.yaml").read_text())
    field = next(f for f in schema["fields"] if f["name"] == "duration_in_month")
    edit(field["bins"])
    (bundle / "feature_schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    reseal(bundle)
    done = modeld("validate", str(bundle), check=False)
    assert done.returncode != 0
    assert "field `duration_in_month`" in done.stdout + done.stderr and words in done.stdout + done.stderr


def test_overlapping_groups_fail_at_load(served, tmp_path):
    root = served[0]
    bundle = tmp_path / "v1"
    shutil.copytree(root / "card" / "v1", bundle)
    schema = yaml.safe_load((bundle / "feature_schema.yaml").read_text())
    field = next(f for f in schema["fields"] if f["name"] == "purpose")
    field["bins"]["groups"][1].append(field["bins"]["groups"][0][0])
    (bundle / "feature_schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    reseal(bundle)
    done = modeld("validate", str(bundle), check=False)
    assert (
        "field `purpose`" in done.stdout + done.stderr and "is in two bin groups" in done.stdout + done.stderr
    )


def test_refuses_what_it_cannot_express(tmp_path):
    x, y = data()
    card = fitted_scorecard(x, y)
    with pytest.raises(ExportError, match="no overrides"):
        export(card, x, tmp_path / "v1", task="t", version="v1", overrides={"fields": {}})
    with pytest.raises(ExportError, match="lacks the binned columns"):
        export(card, x.drop(columns=["purpose"]), tmp_path / "v1", task="t", version="v1")


def test_cli_exports_a_saved_scorecard(served, tmp_path):
    """`modeld-bundle export --model card.joblib` recognises the fitted Scorecard; the sample's
    text cells are typed by the bins, so the bundle equals the one exported from Python."""
    import joblib

    from modeld_bundle.cli import main

    root, _, x, card, _, _ = served
    joblib.dump(card, tmp_path / "card.joblib")
    x.to_csv(tmp_path / "sample.csv", index=False)
    out = tmp_path / "card" / "v1"
    args = ["export", "--model", str(tmp_path / "card.joblib"), "--sample", str(tmp_path / "sample.csv")]
    assert (
        main([*args, "--task", "card", "--version", "v1", "--out", str(out), "--class-labels", "good,bad"])
        == 0
    )
    assert "PASS" in modeld("validate", str(out)).stdout
    for name in ("feature_schema.yaml", "config.yaml", "golden.jsonl", "model.onnx"):
        assert (out / name).read_bytes() == (root / "card" / "v1" / name).read_bytes(), name
