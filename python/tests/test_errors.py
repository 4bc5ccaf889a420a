"""Exports that cannot work fail with a message naming the step or column; the CLI exits non-zero.
A bundle modeld cannot serve is refused by `modeld validate` with the reason."""

from __future__ import annotations

import subprocess
import sys

import joblib
import numpy as np
import pandas as pd
import pytest
from conftest import modeld, reseal
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from modeld_bundle import ExportError, export
from modeld_bundle.examples import LABEL, german_credit


@pytest.fixture(scope="module")
def cancer():
    data = load_breast_cancer(as_frame=True)
    return data.data, data.target


def test_unfitted_model_is_refused(cancer, tmp_path):
    x, _ = cancer
    model = make_pipeline(StandardScaler(), LogisticRegression())
    with pytest.raises(ExportError, match="not fitted"):
        export(model, x, tmp_path / "v1", task="t", version="v1")
    assert not (tmp_path / "v1").exists()


def test_sample_missing_a_column_names_it(cancer, tmp_path):
    x, y = cancer
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x, y)
    with pytest.raises(ExportError, match="mean radius"):
        export(model, x.drop(columns=["mean radius"]), tmp_path / "v1", task="t", version="v1")


def test_unsupported_step_is_named(cancer, tmp_path):
    x, y = cancer
    log = FunctionTransformer(np.log1p)
    model = Pipeline([("log", log), ("lr", LogisticRegression(max_iter=5000))]).fit(x, y)
    with pytest.raises(ExportError, match=r"step `log` \(FunctionTransformer\)"):
        export(model, x, tmp_path / "v1", task="t", version="v1", mode="schema")
    # In auto mode the raw-input form is tried, and the converter's refusal is the answer.
    with pytest.raises(ExportError, match="skl2onnx cannot convert Pipeline"):
        export(model, x, tmp_path / "v1", task="t", version="v1")


def test_overrides_are_checked_against_the_model(tmp_path):
    df = german_credit()
    y = df.pop(LABEL)
    cats = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    prep = ColumnTransformer([("cat", OneHotEncoder(), cats)], remainder="passthrough")
    model = Pipeline([("prep", prep), ("lr", LogisticRegression(max_iter=3000))]).fit(df, y)
    with pytest.raises(ExportError, match="fallback `holiday` is not a category"):
        export(
            model,
            df,
            tmp_path / "a",
            task="t",
            version="v1",
            overrides={"fields": {"purpose": {"unknown": {"fallback": "holiday"}}}},
        )
    with pytest.raises(ExportError, match="no such field"):
        export(
            model, df, tmp_path / "b", task="t", version="v1", overrides={"fields": {"salary": {"min": 0}}}
        )
    report = export(
        model,
        df,
        tmp_path / "c",
        task="t",
        version="v1",
        overrides={
            "fields": {
                "purpose": {"unknown": {"fallback": "others"}},
                "telephone": {"default": "none"},
                "age_in_years": {"min": 18, "max": 120},
            }
        },
    )
    schema = (tmp_path / "c" / "feature_schema.yaml").read_text()
    assert 'fallback: "others"' in schema and "min: 18" in schema
    assert "PASS" in modeld("validate", str(report.out)).stdout


def test_zipmap_model_is_refused_by_modeld_validate(cancer, tmp_path):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    x, y = cancer
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x, y)
    bundle = tmp_path / "v1"
    export(model, x, bundle, task="t", version="v1")
    # The same estimator with skl2onnx's default ZipMap output, dropped in by hand.
    onx = convert_sklearn(
        model[-1],
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    (bundle / "model.onnx").write_bytes(onx.SerializeToString())
    config = (bundle / "config.yaml").read_text().replace('"probabilities"', '"output_probability"')
    (bundle / "config.yaml").write_text(config)
    reseal(bundle)
    done = modeld("validate", str(bundle), check=False)
    assert done.returncode == 1
    assert "output `output_probability` is a sequence of maps (a ZipMap)" in done.stdout


def test_cli_exports_and_reports(cancer, tmp_path):
    x, y = cancer
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x, y)
    joblib.dump(model, tmp_path / "m.joblib")
    x.to_csv(tmp_path / "s.csv", index=False)
    cli = [
        sys.executable,
        "-m",
        "modeld_bundle.cli",
        "export",
        "--model",
        str(tmp_path / "m.joblib"),
        "--sample",
        str(tmp_path / "s.csv"),
        "--task",
        "cancer",
        "--version",
        "v7",
        "--class-labels",
        "malignant,benign",
    ]
    done = subprocess.run([*cli, "--out", str(tmp_path / "v7")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "30 model-input columns" in done.stdout and "worst difference" in done.stdout
    assert 'class_labels:\n  - "malignant"\n  - "benign"' in (tmp_path / "v7" / "config.yaml").read_text()
    assert "PASS" in modeld("validate", str(tmp_path / "v7")).stdout
    # A second export into the same directory is refused: bundles are never overwritten.
    again = subprocess.run([*cli, "--out", str(tmp_path / "v7")], capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "never overwritten" in again.stderr
    bad = subprocess.run(
        [*cli[:-2], "--out", str(tmp_path / "v8"), "--class-labels", "a,b,c"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "class_labels must name each of the 2 classes" in bad.stderr


def test_a_disagreeing_export_lists_the_worst_rows_and_writes_nothing(cancer, tmp_path, monkeypatch):
    import modeld_bundle.bundle as exporter

    x, y = cancer
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x, y)
    real = exporter.encode

    def off_by_one_column(schema, rows):
        # As if the schema scaled one column differently from the fitted scaler.
        encoded = real(schema, rows)
        encoded[:, 0] += 3.0
        return encoded

    monkeypatch.setattr(exporter, "encode", off_by_one_column)
    with pytest.raises(
        ExportError, match=r"disagrees with the Python model on \d+ of \d+ golden rows"
    ) as err:
        export(model, x, tmp_path / "v1", task="t", version="v1")
    assert "row 0 (sample-0)" in str(err.value) or "served" in str(err.value)
    assert not (tmp_path / "v1").exists()
