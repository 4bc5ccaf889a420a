"""The derived plan as `feature_schema.yaml`, serving overrides, and modeld's encoding rule.

`encode` is the Python twin of modeld's preprocessing: f64 arithmetic, one cast to f32 at the
model input. The exporter replays its golden rows through it and onnxruntime before anything is
written, so a schema that would make modeld disagree with the Python model never leaves here.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np

from .derive import FieldPlan, Plan
from .errors import ExportError

OVERRIDE_KEYS = {"min", "max", "default", "unknown", "type"}


def field_spec(f: FieldPlan, integer: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": f.name}
    if f.kind == "numeric":
        spec["type"] = "integer" if integer else "number"
    else:
        spec["type"] = "categorical"
    optional = f.default is not None or f.missing_value is not None
    spec["required"] = not optional
    if f.default is not None:
        spec["default"] = f.default
    elif f.missing_value is not None:
        spec["missing_value"] = f.missing_value
    if f.kind == "numeric":
        if f.ops:
            spec["transform"] = f.ops
        return spec
    spec["vocabulary"] = f.vocabulary
    spec["encoding"] = f.encoding
    if f.encoding == "ordinal":
        if f.codes != [float(i) for i in range(len(f.vocabulary))]:
            spec["codes"] = f.codes
    elif f.onehot_columns != [f"{f.name}={v}" for v in f.vocabulary]:
        spec["onehot_columns"] = f.onehot_columns
    spec["unknown"] = f.unknown
    return spec


def build(plan: Plan, integers: set[str]) -> dict[str, Any]:
    fields = [field_spec(f, f.name in integers) for f in plan.fields]
    schema = {"schema_version": 1, "strict": True, "fields": fields, "columns": plan.columns}
    if plan.ignored:
        schema["ignored"] = plan.ignored
    return schema


def apply_overrides(schema: dict, overrides: dict) -> None:
    """Serving policies a fitted model does not carry, checked against the derived schema."""
    unknown_top = set(overrides) - {"fields", "strict"}
    if unknown_top:
        raise ExportError(f"overrides: unknown key(s) {sorted(unknown_top)} (expected fields, strict)")
    if "strict" in overrides:
        schema["strict"] = bool(overrides["strict"])
    by_name = {f["name"]: f for f in schema["fields"]}
    for name, rules in (overrides.get("fields") or {}).items():
        where = f"overrides: field `{name}`"
        if name not in by_name:
            raise ExportError(f"{where}: the model has no such field (fields: {', '.join(by_name)})")
        if not isinstance(rules, dict) or set(rules) - OVERRIDE_KEYS:
            raise ExportError(f"{where}: expected a map with keys from {sorted(OVERRIDE_KEYS)}")
        spec = by_name[name]
        numeric = spec["type"] in ("number", "integer")
        for key in ("min", "max"):
            if key in rules:
                if not numeric:
                    raise ExportError(f"{where}: {key} applies to numeric fields only")
                spec[key] = rules[key]
        if "type" in rules:
            if not numeric or rules["type"] not in ("number", "integer"):
                raise ExportError(f"{where}: type can only switch a numeric field between number and integer")
            spec["type"] = rules["type"]
        if "unknown" in rules:
            rule = rules["unknown"]
            if spec["type"] != "categorical":
                raise ExportError(f"{where}: unknown applies to categorical fields only")
            if isinstance(rule, dict) and set(rule) == {"fallback"}:
                if rule["fallback"] not in spec["vocabulary"]:
                    raise ExportError(
                        f"{where}: fallback `{rule['fallback']}` is not a category of the model"
                    )
            elif rule != "reject":
                raise ExportError(f"{where}: unknown must be reject or {{fallback: CATEGORY}}")
            spec["unknown"] = rule
        if "default" in rules:
            # A caller that leaves the field out means this value; the model still sees it.
            spec.pop("missing_value", None)
            spec["required"] = False
            spec["default"] = rules["default"]
            try:
                if "input" in spec:
                    from .raw import checked

                    checked(spec, rules["default"], 0)
                else:
                    encode_value(
                        spec, rules["default"], np.zeros(len(schema["columns"])), column_index(schema)
                    )
            except ValueError as e:
                raise ExportError(f"{where}: default {rules['default']!r} is not valid: {e}") from None
        if "min" in spec and "max" in spec and spec["min"] > spec["max"]:
            raise ExportError(f"{where}: min is greater than max")


def column_index(schema: dict) -> dict[str, int]:
    return {c: i for i, c in enumerate(schema["columns"])}


def encode(schema: dict, rows: list[dict[str, Any]]) -> np.ndarray:
    """Rows of raw named values -> the float32 model input, by modeld's rule."""
    index = column_index(schema)
    out = np.zeros((len(rows), len(schema["columns"])), dtype=np.float64)
    for r, row in enumerate(rows):
        for spec in schema["fields"]:
            value = row.get(spec["name"])
            if value is None:
                if "missing" in spec.get("bins", {}):
                    out[r, index[spec["name"]]] = spec["bins"]["missing"]["woe"]
                    continue
                if "default" in spec:
                    value = spec["default"]
                elif "missing_value" in spec:
                    out[r, index[spec["name"]]] = spec["missing_value"]
                    continue
                else:
                    raise ValueError(f"row {r}: field `{spec['name']}`: required field is missing")
            try:
                encode_value(spec, value, out[r], index)
            except ValueError as e:
                raise ValueError(f"row {r}: field `{spec['name']}`: {e}") from None
    # Each value was computed in float64; this is its one rounding, as in modeld.
    return out.astype(np.float32)


def bin_of(spec: dict, value: Any) -> int:
    """The bin a value falls into, as modeld finds it: regular bins (right-open `[a, b)`
    intervals, or category groups), then the special, missing and unknown bins in that order."""
    bins = spec["bins"]
    extra = [k for k in ("special", "missing", "unknown") if k in bins]
    at = {k: len(bins["woe"]) + i for i, k in enumerate(extra)}
    special, missing, unknown = at.get("special"), at.get("missing"), at.get("unknown")
    if value is None:
        if missing is None:
            raise ValueError("required field is missing")
        return missing
    if spec["type"] == "categorical":
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {type(value).__name__}")
        for i, group in enumerate(bins["groups"]):
            if value in group:
                return i
        if special is not None and value in bins["special"]["codes"]:
            return special
        if unknown is None:
            raise ValueError(f"unknown category `{value}`")
        return unknown
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a finite {spec['type']}, got {value!r}")
    if special is not None and float(value) in [float(c) for c in bins["special"]["codes"]]:
        return special
    if ("min" in spec and value < spec["min"]) or ("max" in spec and value > spec["max"]):
        raise ValueError(f"value {value} is out of range")
    return bisect.bisect_right(bins["edges"], float(value))


def bin_table(spec: dict, key: str) -> list:
    """Per bin (in `bin_of`'s order), the table's `woe` or `points`."""
    bins = spec["bins"]
    return list(bins[key]) + [bins[k][key] for k in ("special", "missing", "unknown") if k in bins]


def encode_value(spec: dict, value: Any, row: np.ndarray, index: dict[str, int]) -> None:
    name = spec["name"]
    if spec.get("encoding") == "binned":
        row[index[name]] = bin_table(spec, "woe")[bin_of(spec, value)]
        return
    if spec["type"] in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected {spec['type']}, got {type(value).__name__}")
        x = float(value)
        if not math.isfinite(x):
            raise ValueError(f"value must be finite, got {x}")
        if spec["type"] == "integer" and not float(x).is_integer():
            raise ValueError(f"expected an integer, got {x}")
        if ("min" in spec and x < spec["min"]) or ("max" in spec and x > spec["max"]):
            raise ValueError(f"value {x} is out of range")
        for op in spec.get("transform", []):
            ((kind, v),) = op.items()
            x = {"sub": x - v, "div": x / v, "mul": x * v, "add": x + v}[kind]
        row[index[name]] = x
        return
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    vocab = spec["vocabulary"]
    if value in vocab:
        i = vocab.index(value)
    else:
        rule = spec["unknown"]
        if rule == "reject":
            raise ValueError(f"unknown category `{value}`")
        if rule == "ignore":
            return
        if "value" in rule:
            row[index[name]] = rule["value"]
            return
        i = vocab.index(rule["fallback"])
    if spec["encoding"] == "ordinal":
        row[index[name]] = spec.get("codes", list(range(len(vocab))))[i]
    else:
        target = spec.get("onehot_columns", [f"{name}={v}" for v in vocab])[i]
        if target is not None:
            row[index[target]] = 1.0
