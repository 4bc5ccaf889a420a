"""A regressor through every face: Predict with compare_versions, `modeld label` over BatchPredict
(CSV typed by the live schema, so digit categories travel as text), GetVersion. v1 is the
raw-input form (the whole pipeline, one model input per raw column), v2 the schema form."""

from __future__ import annotations

import csv

import grpc
import numpy as np
import pandas as pd
import pytest
from conftest import Daemon, modeld, reseal
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from modeld_bundle import export
from modeld_bundle.examples import LABEL, german_credit

TASK = "loss"
DIGITS = "installment_rate_in_percentage_of_disposable_income"


def close(got, expected):
    got, expected = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
    return (np.abs(got - expected) / np.maximum(1.0, np.abs(expected))).max() <= 1e-5


@pytest.fixture(scope="module")
def loss(tmp_path_factory, pb):
    df = german_credit().drop(columns=[LABEL])
    y = np.log(df.pop("credit_amount").astype(float))  # a loss model's usual target
    df[DIGITS] = df[DIGITS].astype(str)  # "1".."4": a categorical whose categories are digits
    cats = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    v1 = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [("cat", OneHotEncoder(handle_unknown="ignore"), cats)], remainder=StandardScaler()
                ),
            ),
            ("ridge", Ridge(alpha=1.0)),
        ]
    ).fit(df, y)
    v2 = Pipeline(
        [
            ("prep", ColumnTransformer([("cat", OrdinalEncoder(), cats)], remainder="passthrough")),
            ("hgb", HistGradientBoostingRegressor(max_iter=80, random_state=0)),
        ]
    ).fit(df, y)
    root = tmp_path_factory.mktemp("loss-models")
    for version, model, mode in (("v1", v1, "onnx"), ("v2", v2, "schema")):
        export(model, df, root / TASK / version, task=TASK, version=version, mode=mode)
    (root / TASK / "current").symlink_to("v2")
    daemon = Daemon(root, {"MODELD_KEEP_VERSIONS": "v1"})
    daemon.wait_serving(pb, [TASK], loaded=["v1", "v2"])
    yield daemon, df, v1, v2, root
    daemon.stop()


def test_predict_and_compare_versions_serve_values(loss, pb):
    pb2, stubs = pb
    daemon, df, v1, v2, _ = loss
    rows = df.iloc[:50]
    wire = [
        pb2.Row(
            row_id=f"r{i}",
            features={
                c: pb2.Value(text=v) if isinstance(v, str) else pb2.Value(integer=int(v))
                for c, v in rec.items()
            },
        )
        for i, (_, rec) in enumerate(rows.iterrows())
    ]
    with grpc.insecure_channel(daemon.grpc) as channel:
        stub = stubs.InferenceStub(channel)
        reply = stub.Predict(pb2.PredictRequest(task=TASK, rows=wire, compare_versions=["v1"]))
        live = stub.GetVersion(pb2.GetVersionRequest(task=TASK))
    assert reply.version == "v2" and list(reply.class_names) == []
    assert close([p.values[0] for p in reply.predictions], v2.predict(rows))
    (compared,) = reply.comparisons
    assert compared.version == "v1"
    assert close([p.values[0] for p in compared.predictions], v1.predict(rows))
    assert live.kind == "regressor" and list(live.class_names) == []
    digits = next(f for f in live.fields if f.name == DIGITS)
    assert (digits.type, list(digits.categories)) == ("categorical", ["1", "2", "3", "4"])


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_label_streams_a_csv_through_batch_predict(loss, tmp_path, version):
    daemon, df, v1, v2, _ = loss
    model = {"v1": v1, "v2": v2}[version]
    source = tmp_path / "rows.csv"
    df.to_csv(source, index=False)
    out = tmp_path / "scored.csv"
    done = modeld(
        "label",
        "--version",
        version,
        "--addr",
        f"http://{daemon.grpc}",
        "--task",
        TASK,
        "--input",
        str(source),
        "--output",
        str(out),
        "--chunk-rows",
        "128",
    )
    assert f"labelled {len(df)} rows (0 row errors" in done.stderr, done.stderr
    with open(out) as fh:
        records = list(csv.DictReader(fh))
    assert list(records[0]) == ["row_id", "value", "version", "error"]
    assert len(records) == len(df)
    assert all(r["error"] == "" and r["version"] == version for r in records)
    assert close([float(r["value"]) for r in records], model.predict(df))


def test_regressor_golden_values_are_checked_at_load(loss):
    """The regressor's golden values are checked at load like a classifier's probabilities."""
    _, _, _, _, root = loss
    broken = root / TASK / "v2"
    text = (broken / "golden.jsonl").read_text().replace('"values": [', '"values": [1', 1)
    copy = root.parent / "broken-v2"
    copy.mkdir()
    for f in broken.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "golden.jsonl").write_text(text)
    reseal(copy)
    done = modeld("validate", str(copy), check=False)
    assert done.returncode == 1
    assert "golden.jsonl line 1 (row_id `sample-0`)" in done.stdout and "relative tolerance" in done.stdout
