"""`export`: a fitted scikit-learn model and a sample of its raw rows -> a complete modeld bundle."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from sklearn.base import is_classifier, is_regressor

from . import __version__
from .derive import Plan, check_fitted, plan, raw_columns, split
from .errors import ExportError, Unexpressible
from .raw import bind_inputs, encode_raw, plan_raw
from .schema import apply_overrides, build, encode
from .yaml import dump

# The bar golden rows must clear: modeld's own load check uses the same figures.
PROBABILITY_TOLERANCE = 1e-5  # absolute
VALUE_TOLERANCE = 1e-5  # relative: |a - b| <= tol * max(1, |b|)
BASE_ROWS = 64
BASELINE_BINS = 20
FILES = ["config.yaml", "evaluation.json", "feature_schema.yaml", "golden.jsonl", "model.onnx", "version.txt"]
NATIVE_MISSING = ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor")


@dataclass
class Report:
    """What an export did."""

    out: Path
    task: str
    version: str
    kind: str
    form: str  # "schema" or "onnx" (raw inputs)
    why: str
    fields: list[str]
    columns: list[str]
    golden_rows: int
    worst_difference: float
    seconds: float
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"exported {self.task} {self.version} ({self.kind}) to {self.out} in {self.seconds:.2f} s",
            f"  form:    {self.form} ({self.why})",
            f"  fields:  {len(self.fields)} ({', '.join(self.fields)})",
            f"  columns: {len(self.columns)} model-input columns"
            if self.form == "schema"
            else f"  inputs:  {len(self.fields)} named model inputs",
            f"  golden:  {self.golden_rows} rows replayed through onnxruntime with modeld's encoding, "
            f"worst difference {self.worst_difference:.3g}",
        ]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def export(
    model,
    sample: pd.DataFrame,
    out,
    *,
    task: str,
    version: str,
    class_labels=None,
    overrides: dict | None = None,
    mode: str = "auto",
    description: str = "",
    evaluation: dict | None = None,
) -> Report:
    """Writes a bundle for `model` into `out` (a new or empty directory) and returns what it did.

    `sample` holds raw rows with the columns the model was fitted on (the training rows are a good
    choice: they set the score baseline). `class_labels` renames the classifier's classes, in the
    order of `classes_`. `overrides` adds serving policies (ranges, defaults, unknown-category
    fallbacks). `mode` picks the bundle form: "schema" (the estimator over a float matrix the
    schema encodes), "onnx" (the whole pipeline, one model input per raw column) or "auto" (the
    schema form when every step maps onto it). `evaluation` is merged into evaluation.json.
    """
    from .scorecard import export_card, from_optbinning, is_optbinning

    if is_optbinning(model):
        if overrides or mode != "auto":
            raise ExportError(
                "optbinning models take their serving rules from the bin tables: no overrides or mode"
            )
        if not isinstance(sample, pd.DataFrame) or sample.empty:
            raise ExportError("sample must be a non-empty pandas DataFrame of raw rows")
        return export_card(
            from_optbinning(model, sample),
            out,
            task=task,
            version=version,
            class_labels=class_labels,
            description=description,
            evaluation=evaluation,
        )
    started = time.monotonic()
    if not task or "/" in task or not version or "/" in version:
        raise ExportError("task and version must be non-empty names without '/'")
    if not isinstance(sample, pd.DataFrame) or sample.empty:
        raise ExportError("sample must be a non-empty pandas DataFrame of raw rows")
    if mode not in ("auto", "schema", "onnx"):
        raise ExportError(f"mode must be auto, schema or onnx, not {mode!r}")
    check_fitted(model)
    sample = sample.copy()  # typed below as the model reads it; the caller's frame stays as it is
    _, est = split(model)
    kind = "classifier" if is_classifier(est) else "regressor" if is_regressor(est) else None
    if kind is None:
        raise ExportError(f"{type(est).__name__} is neither a classifier nor a regressor")
    if getattr(est, "is_categorical_", None) is not None and np.any(est.is_categorical_):
        raise ExportError(
            f"{type(est).__name__}: native categorical features cannot be exported; encode them"
        )
    names = labels_of(est, kind, class_labels)

    p, why = None, "requested"
    if mode != "onnx":
        try:
            p = plan(model, sample)
            why = "every step maps onto the feature schema"
        except Unexpressible as e:
            if mode == "schema":
                raise
            why = f"the schema cannot express a step: {e}"
    if p is not None:
        form = "schema"
        if type(est).__name__ in NATIVE_MISSING:
            # These trees route a missing value themselves: modeld writes NaN into its column.
            for f in p.fields:
                if f.kind == "numeric" and f.default is None and f.missing_value is None:
                    f.missing_value = float("nan")
        sample = coerce(sample, p)
        integers = {
            f.name
            for f in p.fields
            if f.kind == "numeric"
            and pd.api.types.is_integer_dtype(sample[f.name])
            and (f.default is None or float(f.default).is_integer())
        }
        native = {f.name: (f.default, f.unknown) for f in p.fields}
        dtypes = p.dtypes
        schema = build(p, integers)
        apply_overrides(schema, overrides or {})
        onx, output = to_onnx(est, kind, [("input", float_matrix(len(p.columns)))], f"{task}_{version}")
        tighten_thresholds(onx, est)
        columns, ignored = p.columns, p.ignored
    else:
        form = "onnx"
        rp = plan_raw(model, sample)
        native = {f["name"]: (None, f.get("unknown")) for f in rp.fields}
        schema = {"schema_version": 1, "strict": True, "fields": rp.fields}
        if rp.ignored:
            schema["ignored"] = rp.ignored
        apply_overrides(schema, overrides or {})
        onx, output = to_onnx(rp.export_model, kind, rp.types, f"{task}_{version}", estimator=est)
        bind_inputs(schema["fields"], onx)
        columns, ignored, dtypes = [], rp.ignored, {}

    thresholds = split_points(est, columns) if form == "schema" else {}
    rows, frame = golden_rows(native, ignored, schema, sample, model, dtypes, thresholds)
    expected = predict(model, frame, kind)
    try:
        feeds = (
            {"input": encode(schema, [r["features"] for r in rows])}
            if form == "schema"
            else encode_raw(schema, [r["features"] for r in rows])
        )
    except ValueError as e:
        raise ExportError(f"golden rows do not encode by the derived schema: {e}") from None
    worst, mismatches = replay(onx, output, feeds, expected, kind)
    if mismatches:
        lines = "\n".join(f"  row {i} ({rows[i]['row_id']}): {reason}" for i, reason in mismatches[:10])
        raise ExportError(
            f"the exported model disagrees with the Python model on {len(mismatches)} of {len(rows)} golden "
            f"rows (worst difference {worst:.3g}):\n{lines}"
        )

    scores = score_of(predict(model, model_frame(model, sample, dtypes), kind), kind)
    doc = {
        "exported_by": f"modeld-bundle {__version__}",
        "model": type(est).__name__,
        "sample_rows": len(sample),
        "metrics": {},
        "score_baseline": baseline(scores, kind),
    }
    for key, value in (evaluation or {}).items():
        doc[key] = (
            {**doc[key], **value} if isinstance(doc.get(key), dict) and isinstance(value, dict) else value
        )

    config: dict[str, Any] = {"task": task, "kind": kind}
    config["description"] = description or f"{type(est).__name__} exported by modeld-bundle"
    config["model_type"] = type(est).__name__
    if kind == "classifier":
        config["outputs"] = {"probabilities": output}
        config["class_labels"] = names
    else:
        config["outputs"] = {"values": output}

    golden_lines = []
    for row, exp in zip(rows, expected, strict=True):
        line = {"row_id": row["row_id"], "features": row["features"]}
        if kind == "classifier":
            line["label"] = names[int(np.argmax(exp))]
            line["probabilities"] = [float(x) for x in exp]
        else:
            line["values"] = [float(x) for x in np.atleast_1d(exp)]
        golden_lines.append(json.dumps(line))

    contents = {
        "model.onnx": onx.SerializeToString(),
        "feature_schema.yaml": "# Generated by modeld-bundle from the fitted pipeline.\n" + dump(schema),
        "config.yaml": "# Generated by modeld-bundle.\n" + dump(config),
        "evaluation.json": json.dumps(doc, indent=2) + "\n",
        "version.txt": version + "\n",
        "golden.jsonl": "\n".join(golden_lines) + "\n",
    }
    write_bundle(Path(out), contents)
    notes = []
    if ignored:
        notes.append(f"dropped by the pipeline and accepted as ignored: {', '.join(ignored)}")
    return Report(
        out=Path(out),
        task=task,
        version=version,
        kind=kind,
        form=form,
        why=why,
        fields=[f["name"] for f in schema["fields"]],
        columns=columns,
        golden_rows=len(rows),
        worst_difference=worst,
        seconds=time.monotonic() - started,
        notes=notes,
    )


def coerce(sample: pd.DataFrame, p: Plan) -> pd.DataFrame:
    """Types come from the model: categorical columns as text, numeric ones as numbers."""
    sample = sample.copy()
    for f in p.fields:
        col = sample[f.name]
        if f.kind == "categorical":
            sample[f.name] = col.map(
                lambda v: v if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            )
            sample[f.name] = sample[f.name].astype(object)
        else:
            try:
                sample[f.name] = pd.to_numeric(col)
            except (ValueError, TypeError) as e:
                steps = ", ".join(f.step_names) or "passthrough"
                raise ExportError(
                    f"sample column `{f.name}` reaches the estimator as a number (steps: {steps}) "
                    f"but holds text: {e}"
                ) from None
    return sample


def labels_of(est, kind: str, class_labels) -> list[str]:
    if kind != "classifier":
        if class_labels:
            raise ExportError("class_labels apply to classifiers only")
        return []
    classes = getattr(est, "classes_", None)
    if classes is None or np.ndim(classes) != 1:
        raise ExportError(f"{type(est).__name__}: multi-output classifiers are not supported")
    if class_labels is None:
        return [str(c) for c in classes]
    labels = [str(c) for c in class_labels]
    if len(labels) != len(classes) or len(set(labels)) != len(labels):
        raise ExportError(f"class_labels must name each of the {len(classes)} classes {list(classes)} once")
    return labels


def float_matrix(width: int):
    from skl2onnx.common.data_types import FloatTensorType

    return FloatTensorType([None, width])


def to_onnx(obj, kind: str, types, graph_name: str, estimator=None):
    """`obj` (the estimator, or the whole pipeline for raw inputs) as an ONNX graph."""
    from skl2onnx import convert_sklearn

    est = estimator if estimator is not None else obj
    opset = register_boosters(est)
    if type(est).__module__.startswith("xgboost") and est.get_booster().feature_names is not None:
        # onnxmltools reads features as f0, f1, ...: convert a copy without the names.
        obj = copy.deepcopy(obj)
        est = obj[-1] if hasattr(obj, "steps") else obj
        est.get_booster().feature_names = None
    options = {id(obj): {"zipmap": False}} if kind == "classifier" else None
    try:
        onx = convert_sklearn(obj, initial_types=types, options=options, target_opset=opset)
    except Exception as e:
        raise ExportError(f"skl2onnx cannot convert {type(obj).__name__}: {e}") from None
    # skl2onnx picks a random graph name and lists opsets in set order: fix both, so the same
    # model exports to the same bytes.
    onx.graph.name = graph_name
    opsets = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    for domain, opset in opsets:
        onx.opset_import.add(domain=domain, version=opset)
    targets = getattr(est, "n_outputs_", 1) if kind == "regressor" else 1
    targets = targets if isinstance(targets, int) else 1
    if targets > 1:
        # skl2onnx declares [N, 1] for multi-output regressors; the runtime checks the
        # declaration on every run, so state the real width.
        dims = onx.graph.output[0].type.tensor_type.shape.dim
        if len(dims) == 2:
            dims[1].ClearField("dim_param")
            dims[1].dim_value = int(targets)
    onx.producer_name = "modeld-bundle"
    onx.producer_version = __version__
    onnx.checker.check_model(onx)
    outputs = [o.name for o in onx.graph.output]
    output = "probabilities" if kind == "classifier" else outputs[0]
    if output not in outputs:
        raise ExportError(f"the converted model has no `{output}` output (outputs: {outputs})")
    return onx, output


def register_boosters(est) -> dict[str, int]:
    """XGBoost and LightGBM convert through onnxmltools, whose XGBoost converter stops at
    opset 15; scikit-learn models use 17."""
    module = type(est).__module__.split(".")[0]
    if module not in ("xgboost", "lightgbm"):
        return {"": 17, "ai.onnx.ml": 3}
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    if module == "xgboost":
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost as convert
    else:
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm as convert
    shapes = (
        calculate_linear_classifier_output_shapes
        if is_classifier(est)
        else calculate_linear_regressor_output_shapes
    )
    options = {"nocl": [True, False], "zipmap": [True, False, "columns"]} if is_classifier(est) else None
    update_registered_converter(type(est), f"modeld{type(est).__name__}", shapes, convert, options=options)
    return {"": 15, "ai.onnx.ml": 3}


def raw(value, spec: dict):
    """A sample cell as a caller would send it; None when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if spec["type"] == "integer":
        return int(value)
    if spec["type"] == "number":
        return float(value)
    return str(value)


def split_points(est, columns: list[str], per_column: int = 6) -> dict[str, list[float]]:
    """Split thresholds of XGBoost and LightGBM trees, by model-input column (a few per column,
    spread over the range). Both compare in double where ONNX trees compare in float, so golden
    rows at and beside these values show whether the conversion decides the same way."""
    module = type(est).__module__.split(".")[0]
    found: dict[int, set[float]] = {}
    if module == "lightgbm":

        def walk(node):
            if "split_feature" in node:
                if node.get("decision_type") == "<=":
                    found.setdefault(node["split_feature"], set()).add(float(node["threshold"]))
                walk(node["left_child"])
                walk(node["right_child"])

        for tree in est.booster_.dump_model()["tree_info"]:
            walk(tree["tree_structure"])
    elif module == "xgboost":
        trees = est.get_booster().trees_to_dataframe()
        names = est.get_booster().feature_names
        for feature, split in zip(trees["Feature"], trees["Split"], strict=True):
            if feature == "Leaf" or pd.isna(split):
                continue
            index = names.index(feature) if names else int(str(feature).lstrip("f"))
            found.setdefault(index, set()).add(float(split))
    points = {}
    for index, values in found.items():
        ordered = sorted(values)
        if index < len(columns) and ordered:
            step = max(1, len(ordered) // per_column)
            points[columns[index]] = ordered[::step][:per_column]
    return points


def tighten_thresholds(onx, est) -> None:
    """LightGBM compares `x <= t` in double; the ONNX tree compares float32 x with a float32
    threshold rounded to nearest, which flips the decision for inputs between the two. Rounding
    each threshold down instead makes the float32 comparison exact for every float32 input."""
    if type(est).__module__.split(".")[0] != "lightgbm":
        return
    by_feature: dict[int, dict[float, float]] = {}

    def walk(node):
        if "split_feature" in node:
            if node.get("decision_type") == "<=":
                t = float(node["threshold"])
                by_feature.setdefault(node["split_feature"], {})[float(np.float32(t))] = float(f32_down(t))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in est.booster_.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    for node in onx.graph.node:
        if node.op_type not in ("TreeEnsembleRegressor", "TreeEnsembleClassifier"):
            continue
        attrs = {a.name: a for a in node.attribute}
        features, modes, values = (
            attrs["nodes_featureids"].ints,
            attrs["nodes_modes"].strings,
            attrs["nodes_values"],
        )
        for i, (feature, mode) in enumerate(zip(features, modes, strict=True)):
            if mode == b"BRANCH_LEQ":
                values.floats[i] = by_feature.get(feature, {}).get(
                    float(np.float32(values.floats[i])), values.floats[i]
                )


def near(t: float, integer: bool) -> list[float]:
    """The values on each side of a threshold that the float32 model input carries exactly: the
    integers around it, or the float32 values just below (or at) and just above it."""
    if integer:
        return sorted({math.floor(t), math.ceil(t), math.floor(t) - 1, math.ceil(t) + 1})
    below = f32_down(t)
    above = np.nextafter(below, np.float32(np.inf))
    return [float(below), float(above)]


def f32_down(t: float) -> np.float32:
    """The largest float32 not above t: for float32 x, `x <= t` exactly when `x <= f32_down(t)`."""
    down = np.float32(t)
    return np.nextafter(down, np.float32(-np.inf)) if float(down) > t else down


def golden_rows(
    native: dict,
    ignored: list[str],
    schema: dict,
    sample: pd.DataFrame,
    model,
    dtypes: dict,
    thresholds: dict[str, list[float]],
):
    """Rows that exercise every rule: sample rows, then per field every category, an unseen one,
    a missing value where allowed, and the sample's min and max."""
    specs = {s["name"]: s for s in schema["fields"]}
    names = raw_columns(model, sample)
    base_rows = []
    for _, rec in sample.iterrows():
        row = {n: raw(rec[n], specs[n]) if n in specs else rec[n] for n in names}
        if all(row[n] is not None for n, s in specs.items() if s["required"]):
            base_rows.append(row)
        if len(base_rows) == BASE_ROWS:
            break
    if not base_rows:
        raise ExportError("no sample row has every required field")
    variants = [(f"sample-{i}", r) for i, r in enumerate(base_rows)]
    base = base_rows[0]

    def variant(tag, name, value):
        row = dict(base)
        row[name] = value
        variants.append((f"{name}:{tag}", row))

    for name, s in specs.items():
        if s["type"] == "categorical":
            for i, v in enumerate(s.get("vocabulary", [])):
                variant(f"category-{i}", name, v)
            if s["unknown"] != "reject":
                variant("unseen", name, "unseen-category")
        else:
            col = sample[name].dropna()
            for tag, v in (("min", col.min()), ("max", col.max())):
                v = raw(v, s)
                if ("min" in s and v < s["min"]) or ("max" in s and v > s["max"]):
                    continue
                variant(tag, name, v)
        if not s["required"]:
            variant("missing", name, None)
        # A threshold belongs to a field when the field is its column unchanged.
        if name in thresholds and s["type"] != "categorical" and not s.get("transform"):
            for k, t in enumerate(thresholds[name]):
                for v in near(t, s["type"] == "integer"):
                    v = int(v) if s["type"] == "integer" else v
                    if ("min" in s and v < s["min"]) or ("max" in s and v > s["max"]):
                        continue
                    variant(f"split-{k}:{v!r}", name, v)

    rows, frame_rows = [], []
    for row_id, row in variants:
        features = {n: v for n, v in row.items() if v is not None and (n in specs or n in ignored)}
        rows.append({"row_id": row_id, "features": features})
        # What the Python model sees: serving policies (override defaults and fallbacks) applied,
        # the model's own rules (imputers, unknown and missing codes) left to the model.
        model_row = {}
        for n in names:
            v = row.get(n)
            s = specs.get(n)
            own_default, own_unknown = native.get(n, (None, None))
            if s is not None and v is None and "default" in s and own_default is None:
                v = s["default"]
            unseen = (
                s is not None
                and s["type"] == "categorical"
                and v is not None
                and v not in s.get("vocabulary", [])
            )
            if (
                unseen
                and isinstance(s["unknown"], dict)
                and "fallback" in s["unknown"]
                and own_unknown != s["unknown"]
            ):
                v = s["unknown"]["fallback"]
            model_row[n] = np.nan if v is None else v
        frame_rows.append(model_row)
    frame = pd.DataFrame(frame_rows, columns=names)
    for n in names:
        if n in specs and specs[n]["type"] != "categorical":
            frame[n] = pd.to_numeric(frame[n])
        else:
            frame[n] = frame[n].astype(object)
    return rows, model_frame(model, frame, dtypes)


def model_frame(model, sample: pd.DataFrame, dtypes: dict) -> pd.DataFrame:
    """The columns the model reads, with the pandas dtypes it was fitted with."""
    frame = sample[raw_columns(model, sample)].copy()
    for name, dtype in dtypes.items():
        frame[name] = frame[name].astype(object).astype(dtype)
    return frame


def predict(model, frame: pd.DataFrame, kind: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unseen categories on purpose
        try:
            if kind == "classifier":
                return np.asarray(model.predict_proba(frame), dtype=np.float64)
            values = np.asarray(model.predict(frame), dtype=np.float64)
        except Exception as e:
            raise ExportError(f"the Python model cannot score the golden rows: {e}") from None
    return values.reshape(len(frame), -1)


def replay(onx, output: str, feeds: dict, expected: np.ndarray, kind: str):
    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run([output], feeds)
    got = np.asarray(got, dtype=np.float64).reshape(len(expected), -1)
    if kind == "classifier" and got.shape[1] == 1 and expected.shape[1] == 2:
        got = np.hstack([1.0 - got, got])
    if got.shape != expected.shape:
        raise ExportError(f"the exported model returns shape {got.shape}, the Python model {expected.shape}")
    diff = np.abs(got - expected)
    if kind == "regressor":
        diff = diff / np.maximum(1.0, np.abs(expected))
    tol = PROBABILITY_TOLERANCE if kind == "classifier" else VALUE_TOLERANCE
    per_row = np.where(np.isnan(diff), np.inf, diff).max(axis=1)
    order = np.argsort(-per_row)
    bad = [
        (int(i), f"served {got[i].tolist()} vs Python {expected[i].tolist()}")
        for i in order
        if per_row[i] > tol
    ]
    return float(per_row.max()), bad


def score_of(outputs: np.ndarray, kind: str) -> np.ndarray:
    if kind == "regressor":
        return outputs[:, 0]
    return outputs[:, 1] if outputs.shape[1] == 2 else outputs.max(axis=1)


def baseline(scores: np.ndarray, kind: str) -> dict[str, Any]:
    """The sample's score distribution, for drift monitoring against live traffic."""
    if kind == "classifier":
        edges = np.linspace(0.0, 1.0, BASELINE_BINS + 1)
        what = "P(class 1)" if scores.ndim == 1 else "top-class probability"
    else:
        lo, hi = float(scores.min()), float(scores.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, BASELINE_BINS + 1)
        what = "points" if kind == "scorecard" else "value (first target)"
    counts, _ = np.histogram(scores, bins=edges)
    return {
        "score": what,
        "edges": [round(float(e), 9) for e in edges],
        "counts": [int(c) for c in counts],
    }


def write_bundle(out: Path, contents: dict[str, bytes | str]) -> None:
    """Writes every file and the manifest into a temporary sibling, then renames it into place,
    so `out` never holds half a bundle."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty directory; bundles are never overwritten")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        lines = []
        for name in FILES:
            data = contents[name]
            data = data.encode() if isinstance(data, str) else data
            (tmp / name).write_bytes(data)
            lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
        (tmp / "MANIFEST.sha256").write_text("".join(lines))
        os.chmod(tmp, 0o755)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
