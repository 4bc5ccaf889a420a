"""Export real pipelines on real data, load each bundle with `modeld validate`, serve them all from
one real daemon, send every row of each data set over gRPC and compare with the Python model."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pandas as pd
import pytest
from conftest import Daemon, modeld
from lightgbm import LGBMClassifier, LGBMRegressor
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    KBinsDiscretizer,
    MaxAbsScaler,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    PolynomialFeatures,
    RobustScaler,
    StandardScaler,
)
from sklearn.tree import DecisionTreeClassifier
from xgboost import XGBClassifier, XGBRegressor

from modeld_bundle import export
from modeld_bundle.examples import LABEL, german_credit

ROWS_PER_CALL = 64


def credit():
    df = german_credit()
    y = df.pop(LABEL)
    return df, y


def text_columns(df):
    return [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]


def with_gaps(df, columns, seed, share=0.06):
    """A copy with some cells missing, as real application data has them."""
    df = df.copy()
    rng = np.random.default_rng(seed)
    for c in columns:
        df.loc[rng.random(len(df)) < share, c] = np.nan
    return df


def onehot_scaler_lr():
    df, y = credit()
    cats = text_columns(df)
    nums = [c for c in df.columns if c not in cats]
    prep = ColumnTransformer(
        [("cat", OneHotEncoder(handle_unknown="ignore"), cats), ("num", StandardScaler(), nums)]
    )
    # String class labels straight from the data: classes_ is ["bad", "good"].
    return Pipeline([("prep", prep), ("lr", LogisticRegression(C=0.5, max_iter=3000))]).fit(df, y), df


def imputers_ordinal_forest():
    df, y = credit()
    cats = text_columns(df)
    nums = [c for c in df.columns if c not in cats]
    df = with_gaps(df, ["purpose", "housing", "age_in_years", "credit_amount"], seed=1)
    cat = make_pipeline(
        SimpleImputer(strategy="most_frequent"),
        OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
    )
    prep = ColumnTransformer([("cat", cat, cats), ("num", SimpleImputer(strategy="mean"), nums)])
    est = RandomForestClassifier(n_estimators=40, max_depth=8, random_state=0)
    return Pipeline([("prep", prep), ("rf", est)]).fit(df, y), df


def minmax_gradient_boosting():
    data = load_wine(as_frame=True)
    model = make_pipeline(MinMaxScaler(), GradientBoostingClassifier(n_estimators=40, random_state=0))
    return model.fit(data.data, data.target), data.data


def hist_gradient_boosting():
    df, y = credit()
    cats = text_columns(df)
    df = with_gaps(df, ["savings_account_and_bonds", "duration_in_month", "age_in_years"], seed=2)
    enc = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-2)
    prep = ColumnTransformer([("cat", enc, cats)], remainder="passthrough")
    est = HistGradientBoostingClassifier(max_iter=60, random_state=0)
    return Pipeline([("prep", prep), ("hgb", est)]).fit(df, (y == "bad").astype(int)), df


def multiclass_string_labels():
    data = load_iris(as_frame=True)
    y = data.target.map(dict(enumerate(data.target_names)))
    model = make_pipeline(
        RobustScaler(), MaxAbsScaler(), ExtraTreesClassifier(n_estimators=30, random_state=0)
    )
    return model.fit(data.data, y), data.data


def ridge_regressor():
    data = load_diabetes(as_frame=True)
    return make_pipeline(StandardScaler(), Ridge(alpha=0.5)).fit(data.data, data.target), data.data


def forest_two_outputs():
    data = load_diabetes(as_frame=True)
    targets = np.column_stack([data.target, data.target * data.data["bmi"] * 10])
    model = RandomForestRegressor(n_estimators=20, max_depth=6, random_state=0)
    return model.fit(data.data, targets), data.data


def drop_passthrough_tree():
    df, y = credit()
    nums = [c for c in df.columns if c not in text_columns(df)]
    encoded = ["purpose", "credit_history", "telephone", "foreign_worker", "housing"]
    onehot = OneHotEncoder(drop="if_binary", min_frequency=40, handle_unknown="infrequent_if_exist")
    prep = ColumnTransformer([("cat", onehot, encoded), ("num", "passthrough", nums)], remainder="drop")
    est = DecisionTreeClassifier(max_depth=6, random_state=0)
    return Pipeline([("prep", prep), ("tree", est)]).fit(df, y), df


def credit_amount_regressor():
    df, _ = credit()
    y = df.pop("credit_amount").astype(float)
    cats = text_columns(df)
    prep = ColumnTransformer(
        [("cat", OneHotEncoder(drop="first", handle_unknown="ignore"), cats)], remainder=StandardScaler()
    )
    est = GradientBoostingRegressor(n_estimators=60, max_depth=3, random_state=0)
    return Pipeline([("prep", prep), ("gbr", est)]).fit(df, y), df


def breast_cancer_lr():
    data = load_breast_cancer(as_frame=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    return model.fit(data.data, data.target), data.data


def kbins_raw_input():
    """Binning has no schema form: the whole pipeline is the model, one input per raw column."""
    df, y = credit()
    cats = text_columns(df)
    nums = [c for c in df.columns if c not in cats]
    df = with_gaps(df, ["purpose", "job"], seed=3)
    cat = make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore"))
    bins = KBinsDiscretizer(n_bins=4, encode="onehot-dense", quantile_method="averaged_inverted_cdf")
    prep = ColumnTransformer([("cat", cat, cats), ("num", bins, nums)])
    return Pipeline([("prep", prep), ("lr", LogisticRegression(max_iter=3000))]).fit(df, y), df


def polynomial_raw_input():
    data = load_diabetes(as_frame=True)
    model = make_pipeline(StandardScaler(), PolynomialFeatures(degree=2), Ridge(alpha=1.0))
    return model.fit(data.data, data.target), data.data


def xgboost_binary():
    df, y = credit()
    prep = ColumnTransformer([("cat", OrdinalEncoder(), text_columns(df))], remainder="passthrough")
    est = XGBClassifier(n_estimators=80, max_depth=4, learning_rate=0.2)
    return Pipeline([("prep", prep), ("xgb", est)]).fit(df, (y == "bad").astype(int)), df


def xgboost_regressor():
    data = load_diabetes(as_frame=True)
    return XGBRegressor(n_estimators=80, max_depth=4).fit(data.data, data.target), data.data


def categoricals(df):
    """Text columns as pandas categoricals, as LightGBM users fit them."""
    return df.assign(**{c: df[c].astype("category") for c in text_columns(df)})


def lightgbm_multiclass_categoricals():
    df, _ = credit()
    y = df.pop("housing")
    x = categoricals(df)
    return LGBMClassifier(n_estimators=60, num_leaves=15, verbose=-1).fit(x, y), x


def lightgbm_regressor():
    df, _ = credit()
    y = np.log(df.pop("credit_amount").astype(float))  # a loss model's usual target
    x = categoricals(df)
    return LGBMRegressor(n_estimators=80, num_leaves=15, verbose=-1).fit(x, y), x


CASES = {
    f.__name__: f
    for f in [
        onehot_scaler_lr,
        imputers_ordinal_forest,
        minmax_gradient_boosting,
        hist_gradient_boosting,
        multiclass_string_labels,
        ridge_regressor,
        forest_two_outputs,
        drop_passthrough_tree,
        credit_amount_regressor,
        breast_cancer_lr,
        kbins_raw_input,
        polynomial_raw_input,
        xgboost_binary,
        xgboost_regressor,
        lightgbm_multiclass_categoricals,
        lightgbm_regressor,
    ]
}

# The bundle form each case must get from `mode="auto"`.
RAW_INPUT = {"kbins_raw_input", "polynomial_raw_input"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, pb):
    """Every case exported into one model root and served by one daemon."""
    root = tmp_path_factory.mktemp("models")
    cases = {}
    for name, build in CASES.items():
        model, data = build()
        task = name.replace("_", "-")
        report = export(model, data, root / task / "v1", task=task, version="v1")
        assert report.form == ("onnx" if name in RAW_INPUT else "schema"), report
        (root / task / "current").symlink_to("v1")
        cases[name] = (task, model, data, report)
    daemon = Daemon(root)
    daemon.wait_serving(pb, [task for task, *_ in cases.values()])
    yield root, daemon, cases
    daemon.stop()


def wire_value(pb2, v, spec_type):
    if spec_type == "integer":
        return pb2.Value(integer=int(v))
    if spec_type in ("number",):
        return pb2.Value(number=float(v))
    return pb2.Value(text=str(v))


@pytest.mark.parametrize("case", list(CASES))
def test_every_row_served_like_python(case, served, pb):
    pb2, stubs = pb
    root, daemon, cases = served
    task, model, data, report = cases[case]
    validated = modeld("validate", str(root / task / "v1"))
    assert "PASS" in validated.stdout
    # Every schema-form model here (linear, forests, boosting, XGBoost, LightGBM) is evaluated
    # natively once it agrees with ONNX Runtime; raw-input graphs stay with the runtime.
    evaluator = next(line for line in validated.stdout.splitlines() if " evaluator " in line)
    assert ("native" in evaluator) == (case not in RAW_INPUT), evaluator

    with grpc.insecure_channel(daemon.grpc) as channel:
        stub = stubs.InferenceStub(channel)
        live = stub.GetVersion(pb2.GetVersionRequest(task=task))
        fields = {f.name: f for f in live.fields}
        assert list(fields) == report.fields
        optional = [f.name for f in live.fields if not f.required]
        open_categories = [f.name for f in live.fields if f.type == "categorical" and f.unknown != "reject"]

        # The rows as sent: every row, some optional fields left out, some categories unseen.
        sent = data.copy()
        for c in sent.columns:
            if c in fields and fields[c].type == "categorical":
                sent[c] = sent[c].astype(object)
        for i in range(len(sent)):
            if optional and i % 7 == 3:
                sent.iat[i, sent.columns.get_loc(optional[i % len(optional)])] = np.nan
            if open_categories and i % 11 == 5:
                sent.iat[i, sent.columns.get_loc(open_categories[i % len(open_categories)])] = "never-seen"
        if any(f.type == "integer" for f in live.fields):
            for c in sent.columns:
                if c in fields and fields[c].type == "integer":
                    sent[c] = sent[c].astype(float)  # NaN needs floats; values stay integral

        served_rows = []
        for start in range(0, len(sent), ROWS_PER_CALL):
            chunk = sent.iloc[start : start + ROWS_PER_CALL]
            rows = []
            for i, (_, rec) in enumerate(chunk.iterrows()):
                features = {
                    c: wire_value(pb2, v, fields[c].type)
                    for c, v in rec.items()
                    if c in fields and not (isinstance(v, float) and math.isnan(v))
                }
                rows.append(pb2.Row(row_id=f"r{start + i}", features=features))
            reply = stub.Predict(pb2.PredictRequest(task=task, rows=rows, request_id=f"{case}-{start}"))
            assert reply.version == "v1"
            served_rows.extend(reply.predictions)
    assert len(served_rows) == len(sent)

    frame = sent.copy()
    for c in frame.columns:
        if c in fields and fields[c].type != "categorical":
            frame[c] = pd.to_numeric(frame[c])
        elif isinstance(data[c].dtype, pd.CategoricalDtype):
            frame[c] = frame[c].astype(object).astype(data[c].dtype)  # unseen categories become NaN
    if report.kind == "classifier":
        expected = model.predict_proba(frame)
        got = np.array([list(p.probabilities) for p in served_rows])
        worst = np.abs(got - expected).max()
        assert worst <= 1e-5, f"{case}: probabilities differ by up to {worst}"
        names = [str(c) for c in model.classes_]
        assert list(live.class_names) == names
        labels = [names[i] for i in expected.argmax(axis=1)]
        assert [p.label for p in served_rows] == labels
    else:
        expected = np.asarray(model.predict(frame), dtype=np.float64).reshape(len(frame), -1)
        got = np.array([list(p.values) for p in served_rows])
        rel = (np.abs(got - expected) / np.maximum(1.0, np.abs(expected))).max()
        assert rel <= 1e-5, f"{case}: values differ by up to {rel} (relative)"
        assert all(p.label == "" and len(p.probabilities) == 0 for p in served_rows)
