"""The raw-input form: the whole fitted pipeline goes to ONNX with one named input per raw column.

Used when a step has no schema form (binning, polynomial features, target encoders, anything
skl2onnx converts). The schema still lists every field with its type, required/default, range
and, where an encoder knows them, its categories, so modeld checks and names requests the same
way; each field records the model input it feeds, read back from the exported graph.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

from .derive import column_transformer_groups, is_nan, raw_columns, split
from .errors import ExportError

NATIVE_MISSING = ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor")


@dataclass
class RawPlan:
    fields: list[dict[str, Any]]  # schema field specs, each with its `input`
    ignored: list[str]
    export_model: Any  # the pipeline as converted (string imputers take "" as missing)
    types: list[tuple[str, Any]]  # skl2onnx initial types, in field order


def chains(model, names: list[str]) -> tuple[dict[str, list], list[str]]:
    """Each used raw column's chain of steps (with the column's position in each), and the
    columns the pipeline drops."""
    pre, _ = split(model)
    if pre and isinstance(pre[0][1], ColumnTransformer):
        groups, dropped = column_transformer_groups(pre[0][0], pre[0][1], names)
        rest = [s for _, s in pre[1:]]
    else:
        groups, dropped = [(list(names), [(n, s) for n, s in pre])], set()
        rest = []
    out = {}
    for cols, chain in groups:
        for j, col in enumerate(cols):
            if col in out:
                raise ExportError(
                    f"column `{col}` feeds two transformers; modeld gives each raw column one input"
                )
            out[col] = [(s, j) for _, s in chain] + [(s, None) for s in rest]
    return out, [n for n in names if n in dropped and n not in out]


def plan_raw(model, sample: pd.DataFrame) -> RawPlan:
    """Plans the raw-input form; types `sample`'s columns in place as the model reads them."""
    names = raw_columns(model, sample)
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType

    # Numbers enter as float32 (skl2onnx's converters compute in float32 and cannot mix float and
    # double in one graph), int64 where the column holds integers and nothing imputes it.
    export_model = copy.deepcopy(model)
    used, ignored = chains(export_model, names)
    _, est = split(export_model)
    native_missing = type(est).__name__ in NATIVE_MISSING
    fields, types = [], []
    for col in names:
        if col not in used:
            continue
        chain = used[col]
        encoder = next(((s, j) for s, j in chain if isinstance(s, (OneHotEncoder, OrdinalEncoder))), None)
        # Text is what a fitted step holds text categories for (encoders, target encoders);
        # everything else reaches the model as a number.
        text = any(
            j is not None and hasattr(s, "categories_") and any(isinstance(c, str) for c in s.categories_[j])
            for s, j in chain
        )
        imputer = chain[0][0] if chain and isinstance(chain[0][0], SimpleImputer) else None
        spec: dict[str, Any] = {"name": col}
        if text:
            sample[col] = sample[col].map(lambda v: v if v is None or is_nan(v) else str(v)).astype(object)
            spec["type"] = "categorical"
            ty, onnx_type = "string", StringTensorType([None, 1])
            if imputer is not None:
                # The graph's imputer takes "" as missing: a caller's missing value is sent as "".
                imputer.missing_values = ""
                spec.update(required=False, missing_value="")
            else:
                spec["required"] = True
            if encoder is not None:
                enc, j = encoder
                spec["vocabulary"] = [str(c) for c in enc.categories_[j] if not is_nan(c)]
                spec["unknown"] = "reject" if enc.handle_unknown == "error" else "pass"
            else:
                spec["unknown"] = "pass"
        else:
            try:
                sample[col] = pd.to_numeric(sample[col])
            except (ValueError, TypeError) as e:
                raise ExportError(
                    f"sample column `{col}` reaches the model as a number but holds text: {e}"
                ) from None
            integer = pd.api.types.is_integer_dtype(sample[col])
            spec["type"] = "integer" if integer else "number"
            if imputer is not None or native_missing:
                spec.update(required=False, missing_value=float("nan"))
                ty, onnx_type = "float", FloatTensorType([None, 1])
            else:
                spec["required"] = True
                ty, onnx_type = (
                    ("int64", Int64TensorType([None, 1]))
                    if integer
                    else ("float", FloatTensorType([None, 1]))
                )
        spec["input"] = {"name": col, "type": ty}
        fields.append(spec)
        types.append((col, onnx_type))
    return RawPlan(fields=fields, ignored=ignored, export_model=export_model, types=types)


def bind_inputs(fields: list[dict], onx) -> None:
    """Input names as the exported graph has them (the converter may legalise names)."""
    graph_inputs = [i.name for i in onx.graph.input]
    if len(graph_inputs) != len(fields):
        raise ExportError(f"the converted graph has {len(graph_inputs)} inputs for {len(fields)} fields")
    for spec, name in zip(fields, graph_inputs, strict=True):
        spec["input"]["name"] = name


def encode_raw(schema: dict, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows of raw named values -> one array per model input, by modeld's rule."""
    dtypes = {"string": object, "int64": np.int64, "float": np.float32, "double": np.float64}
    feeds = {}
    for spec in schema["fields"]:
        values = []
        for r, row in enumerate(rows):
            value = row.get(spec["name"])
            if value is None:
                if "default" in spec:
                    value = spec["default"]
                elif "missing_value" in spec:
                    values.append(spec["missing_value"])
                    continue
                else:
                    raise ValueError(f"row {r}: field `{spec['name']}`: required field is missing")
            values.append(checked(spec, value, r))
        column = np.array(values, dtype=dtypes[spec["input"]["type"]]).reshape(-1, 1)
        feeds[spec["input"]["name"]] = column
    return feeds


def checked(spec: dict, value: Any, r: int) -> Any:
    where = f"row {r}: field `{spec['name']}`"
    if spec["type"] == "categorical":
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected text")
        vocab = spec.get("vocabulary", [])
        if value in vocab or spec["unknown"] == "pass":
            return value
        if isinstance(spec["unknown"], dict):
            return spec["unknown"]["fallback"]
        raise ValueError(f"{where}: unknown category `{value}`")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number")
    if ("min" in spec and value < spec["min"]) or ("max" in spec and value > spec["max"]):
        raise ValueError(f"{where}: value {value} is out of range")
    return value
