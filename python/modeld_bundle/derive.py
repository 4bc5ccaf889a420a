"""Derive modeld's feature schema from a fitted scikit-learn pipeline.

The preprocessing steps stay in Python's hands only until export: each raw column's chain of
steps is read off the fitted transformers and written as schema rules that modeld applies per
request. Encoders are probed (transformed one category at a time) rather than read from private
attributes, so the schema records exactly what scikit-learn does for every category, an unseen
one and a missing one, whatever the encoder's options (drop, infrequent, unknown and missing
codes). Only the final estimator goes to ONNX, over the float matrix the schema produces.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    MaxAbsScaler,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    RobustScaler,
    StandardScaler,
)

from .errors import ExportError, Unexpressible

SCALERS = (StandardScaler, MinMaxScaler, MaxAbsScaler, RobustScaler)
ENCODERS = (OneHotEncoder, OrdinalEncoder)
# A category no fitted encoder has seen, used to probe the unknown-category rule.
UNSEEN = "\x00modeld-unseen\x00"


@dataclass
class FieldPlan:
    """One raw column: what the schema says about it, and the columns it writes."""

    name: str
    kind: str  # "numeric" or "categorical"
    step_names: list[str] = field(default_factory=list)
    default: Any = None  # an imputer's statistic: the raw value a missing field becomes
    missing_value: float | None = None  # a code written straight into the column
    ops: list[dict[str, float]] = field(default_factory=list)
    encoding: str | None = None  # "onehot" or "ordinal"
    vocabulary: list[str] = field(default_factory=list)
    codes: list[float] = field(default_factory=list)
    onehot_columns: list[str | None] = field(default_factory=list)
    unknown: Any = "reject"
    columns: list[str] = field(default_factory=list)  # in model-input order


@dataclass
class Plan:
    fields: list[FieldPlan]
    ignored: list[str]
    columns: list[str]
    estimator: BaseEstimator
    # Columns the model reads as pandas categoricals (LightGBM): the dtype to give them.
    dtypes: dict[str, Any] = field(default_factory=dict)


def split(model) -> tuple[list[tuple[str, Any]], BaseEstimator]:
    """The preprocessing steps and the final estimator."""
    if isinstance(model, Pipeline):
        steps = list(model.steps)
        name, est = steps[-1]
        if est is None or est == "passthrough":
            raise ExportError(f"pipeline step `{name}`: the last step must be an estimator")
        return steps[:-1], est
    return [], model


def raw_columns(model, sample: pd.DataFrame) -> list[str]:
    """The raw columns the model reads, in its order, as the sample (and callers) name them.

    LightGBM replaces characters it cannot store in feature names (spaces, quotes, brackets) with
    `_`; such a name is matched back to the sample's column."""
    check_fitted(model)
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        raise ExportError(
            "the model has no feature_names_in_: fit it on a pandas DataFrame so its raw columns are named"
        )
    plain = {re.sub(r"[^0-9A-Za-z_]", "_", str(c)): str(c) for c in sample.columns}
    out, missing = [], []
    for n in map(str, names):
        if n in sample.columns:
            out.append(n)
        elif n in plain:
            out.append(plain[n])
        else:
            missing.append(n)
    if missing:
        raise ExportError(f"the sample lacks column(s) the model was fitted on: {', '.join(missing)}")
    return out


def plan(model, sample: pd.DataFrame) -> Plan:
    names = raw_columns(model, sample)
    pre, est = split(model)
    if not pre and getattr(getattr(est, "booster_", None), "pandas_categorical", None):
        return lightgbm_plan(est, names)
    if getattr(est, "enable_categorical", False):
        raise ExportError(
            f"{type(est).__name__}(enable_categorical=True): XGBoost's categorical splits are not exported; "
            "encode the categories (e.g. an OrdinalEncoder in a Pipeline)"
        )

    # Groups of raw columns and the chain of steps each goes through, in output order.
    if pre and isinstance(pre[0][1], ColumnTransformer):
        if len(pre) > 1:
            later = pre[1][0]
            raise Unexpressible(
                f"pipeline step `{later}` follows a ColumnTransformer and works on encoded columns; "
                "put per-column steps inside the ColumnTransformer"
            )
        groups, dropped = column_transformer_groups(pre[0][0], pre[0][1], names)
    else:
        groups, dropped = [(list(names), [(n, s) for n, s in pre])], []

    fields: list[FieldPlan] = []
    seen: set[str] = set()
    for columns, chain in groups:
        for col in columns:
            if col in seen:
                raise Unexpressible(
                    f"column `{col}` feeds two transformers; modeld gives each raw column one chain"
                )
            seen.add(col)
        fields.extend(chain_fields(columns, chain))
    ignored = [n for n in names if n in dropped and n not in seen]
    out = [c for f in fields for c in f.columns]
    if len(set(out)) != len(out):
        raise ExportError("two derived model-input columns share a name")
    width = n_features_in(est)
    if width is not None and width != len(out):
        raise ExportError(f"the schema derives {len(out)} columns but the estimator takes {width}")
    return Plan(fields=fields, ignored=ignored, columns=out, estimator=est)


def lightgbm_plan(est, names: list[str]) -> Plan:
    """A LightGBM model fitted on pandas categoricals: each such column is an ordinal field whose
    codes are the positions in the categories LightGBM recorded; an unseen or missing category is
    NaN, as pandas gives it to LightGBM."""
    booster = est.booster_
    indices = booster.params.get("categorical_column") or []
    vocabularies = dict(zip(indices, booster.pandas_categorical, strict=True))
    fields, dtypes = [], {}
    for i, name in enumerate(names):
        f = FieldPlan(name=name, kind="numeric", columns=[name])
        if i in vocabularies:
            categories = list(vocabularies[i])
            if not all(isinstance(c, str) for c in categories):
                raise ExportError(f"column `{name}`: LightGBM categories must be text for modeld")
            f.kind, f.encoding, f.vocabulary = "categorical", "ordinal", categories
            f.codes = [float(k) for k in range(len(categories))]
            f.unknown, f.missing_value = {"value": float("nan")}, float("nan")
            dtypes[name] = pd.CategoricalDtype(categories)
        fields.append(f)
    return Plan(fields=fields, ignored=[], columns=list(names), estimator=est, dtypes=dtypes)


def check_fitted(model) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(model)
    except NotFittedError as e:
        raise ExportError(f"the model is not fitted: {e}") from None
    except TypeError as e:
        raise ExportError(f"not a scikit-learn estimator: {e}") from None


def n_features_in(est) -> int | None:
    return getattr(est, "n_features_in_", None)


def column_transformer_groups(step: str, ct: ColumnTransformer, names: list[str]):
    groups, dropped = [], set()
    for name, trans, cols in ct.transformers_:
        cols = resolve_columns(f"{step}/{name}", cols, names)
        if trans == "drop":
            dropped.update(cols)
            continue
        if not cols:
            continue
        if trans == "passthrough" or is_identity(trans):
            chain = []
        elif isinstance(trans, Pipeline):
            chain = [(f"{step}/{name}/{n}", s) for n, s in trans.steps if s not in (None, "passthrough")]
        else:
            chain = [(f"{step}/{name}", trans)]
        groups.append((cols, chain))
    return groups, dropped


def is_identity(step) -> bool:
    """A passthrough remainder is fitted as an identity FunctionTransformer."""
    from sklearn.preprocessing import FunctionTransformer

    return isinstance(step, FunctionTransformer) and step.func is None


def resolve_columns(step: str, cols, names: list[str]) -> list[str]:
    if isinstance(cols, str):
        return [cols]
    if isinstance(cols, slice):
        return names[cols]
    arr = np.asarray(cols)
    if arr.size == 0:
        return []
    if arr.dtype == bool:
        return [n for n, keep in zip(names, arr, strict=True) if keep]
    if np.issubdtype(arr.dtype, np.integer):
        return [names[i] for i in arr]
    if all(isinstance(c, str) for c in arr):
        return [str(c) for c in arr]
    raise ExportError(f"step `{step}`: cannot resolve its column selection {cols!r}")


def chain_fields(columns: list[str], chain) -> list[FieldPlan]:
    encoder_at = next((i for i, (_, s) in enumerate(chain) if isinstance(s, ENCODERS)), None)
    fields = []
    for col in columns:
        kind = "categorical" if encoder_at is not None else "numeric"
        fields.append(FieldPlan(name=col, kind=kind))
    for position, (step_name, step) in enumerate(chain):
        for j, f in enumerate(fields):
            f.step_names.append(step_name)
            apply_step(f, j, step_name, step, position, encoder_at)
    for f in fields:
        if f.kind == "numeric":
            f.columns = [f.name]
        elif f.encoding == "ordinal":
            f.columns = [f.name]
    return fields


def apply_step(f: FieldPlan, j: int, step_name: str, step, position: int, encoder_at: int | None) -> None:
    where = f"step `{step_name}` ({type(step).__name__}) on column `{f.name}`"
    after_encoder = encoder_at is not None and position > encoder_at
    if isinstance(step, SimpleImputer):
        if after_encoder or f.ops:
            raise Unexpressible(f"{where}: imputation after scaling or encoding cannot be expressed")
        if step.add_indicator:
            raise Unexpressible(f"{where}: add_indicator=True adds columns modeld cannot derive")
        if not is_nan(step.missing_values):
            raise Unexpressible(f"{where}: missing_values={step.missing_values!r}; only NaN is supported")
        stat = step.statistics_[j]
        if f.kind == "numeric":
            stat = float(stat)
            if math.isnan(stat):
                raise Unexpressible(f"{where}: the fitted statistic is NaN (an all-missing column)")
        else:
            stat = str(stat)
        f.default = stat
    elif isinstance(step, SCALERS):
        if f.kind != "numeric" or after_encoder or position == encoder_at:
            raise Unexpressible(f"{where}: scaling an encoded column cannot be expressed")
        f.ops.extend(scaler_ops(where, step, j))
    elif isinstance(step, ENCODERS):
        if position != encoder_at:
            raise Unexpressible(f"{where}: a second encoder cannot be expressed")
        probe_encoder(f, j, where, step)
    else:
        raise Unexpressible(
            f"{where}: {type(step).__name__} is not a step modeld can express "
            "(supported: SimpleImputer, StandardScaler, MinMaxScaler, MaxAbsScaler, RobustScaler, "
            "OneHotEncoder, OrdinalEncoder, passthrough, drop)"
        )


def is_nan(x) -> bool:
    try:
        return x is not None and math.isnan(x)
    except TypeError:
        return False


def scaler_ops(where: str, s, j: int) -> list[dict[str, float]]:
    """The scaler's own arithmetic, in its order, in float64."""
    if isinstance(s, StandardScaler):
        ops = []
        if s.with_mean:
            ops.append({"sub": float(s.mean_[j])})
        if s.with_std:
            ops.append({"div": float(s.scale_[j])})
        return ops
    if isinstance(s, MinMaxScaler):
        if s.clip:
            raise Unexpressible(f"{where}: MinMaxScaler(clip=True) cannot be expressed")
        return [{"mul": float(s.scale_[j])}, {"add": float(s.min_[j])}]
    if isinstance(s, MaxAbsScaler):
        return [{"div": float(s.scale_[j])}]
    ops = []
    if s.with_centering:
        ops.append({"sub": float(s.center_[j])})
    if s.with_scaling:
        ops.append({"div": float(s.scale_[j])})
    return ops


def probe_encoder(f: FieldPlan, j: int, where: str, enc) -> None:
    """Reads the encoder's rule for column j by transforming one value at a time."""
    categories = list(enc.categories_[j])
    fitted_missing = [c for c in categories if is_nan(c) or c is None]
    if fitted_missing and isinstance(enc, OrdinalEncoder):
        # Missing values seen while fitting get encoded_missing_value: probed below.
        categories = [c for c in categories if not (is_nan(c) or c is None)]
    elif fitted_missing:
        raise Unexpressible(
            f"{where}: missing values reached the encoder while it was fitted; put a SimpleImputer before it "
            "or fit without missing values"
        )
    if not all(isinstance(c, str) for c in categories):
        raise Unexpressible(
            f"{where}: the encoder was fitted on numbers; modeld categories are text: cast the column to str "
            "before fitting"
        )
    f.vocabulary = [str(c) for c in categories]
    baseline = [cats[0] for cats in enc.categories_]  # sorted: a real category comes first
    width = len(baseline)

    def run(value):
        row = list(baseline)
        row[j] = value
        names = getattr(enc, "feature_names_in_", None)
        x = (
            pd.DataFrame([row], columns=list(names), dtype=object)
            if names is not None
            else np.array([row], dtype=object)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = enc.transform(x)
        out = out.toarray() if hasattr(out, "toarray") else np.asarray(out)
        return np.asarray(out, dtype=np.float64)[0]

    def attempt(value):
        try:
            return run(value)
        except Exception:  # the encoder refuses the value: an error, by its own rule
            return None

    if isinstance(enc, OrdinalEncoder):
        f.encoding = "ordinal"
        f.codes = [float(run(c)[j]) for c in categories]
        unknown = attempt(UNSEEN)
        f.unknown = "reject" if unknown is None else {"value": float(unknown[j])}
        missing = attempt(np.nan)
        if missing is not None and f.default is None:
            f.missing_value = float(missing[j])
        return

    f.encoding = "onehot"
    outs = [run(c) for c in categories]
    # The columns of feature j are those that change with its value; the others hold baseline.
    offsets = np.cumsum([0] + list(enc._n_features_outs)) if hasattr(enc, "_n_features_outs") else None
    if offsets is None or len(offsets) != width + 1:
        raise Unexpressible(f"{where}: cannot locate the encoder's output columns")
    lo, hi = int(offsets[j]), int(offsets[j + 1])
    names = [str(n) for n in enc.get_feature_names_out()[lo:hi]]
    prefix = f"{enc.feature_names_in_[j]}_" if hasattr(enc, "feature_names_in_") else None
    column_names = [
        f"{f.name}={n[len(prefix) :]}" if prefix and n.startswith(prefix) else f"{f.name}={n}" for n in names
    ]
    f.columns = column_names
    f.onehot_columns = []
    for c, out in zip(categories, outs, strict=True):
        hot = np.flatnonzero(out[lo:hi])
        if len(hot) > 1 or (len(hot) == 1 and out[lo + hot[0]] != 1.0):
            raise Unexpressible(f"{where}: category `{c}` does not encode as one 1.0")
        f.onehot_columns.append(column_names[hot[0]] if len(hot) else None)
    unknown = attempt(UNSEEN)
    if unknown is None:
        f.unknown = "reject"
    else:
        hot = np.flatnonzero(unknown[lo:hi])
        if len(hot) == 0:
            f.unknown = "ignore"
        else:
            target = column_names[hot[0]]
            f.unknown = {
                "fallback": next(
                    v for v, c in zip(f.vocabulary, f.onehot_columns, strict=True) if c == target
                )
            }
