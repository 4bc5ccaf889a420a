"""The example credit-risk models, unfitted, and the train/test split they are fitted on: shared
by the export script and the benchmarks that serve the same models elsewhere (scikit-learn and
pandas only)."""

from __future__ import annotations

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

SEED = 20240611


def split(df: pd.DataFrame, label: str):
    """Features and 0/1 target (1 = "bad"), split 75/25 stratified with the fixed seed."""
    df = df.copy()
    y = (df.pop(label) == "bad").astype(int)
    return train_test_split(df, y, test_size=0.25, random_state=SEED, stratify=y)


def example_models(x: pd.DataFrame) -> dict[str, tuple[str, Pipeline]]:
    """Version -> (description, unfitted pipeline) over the columns of `x`."""
    cats = [c for c in x.columns if not pd.api.types.is_numeric_dtype(x[c])]
    nums = [c for c in x.columns if c not in cats]
    return {
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


def example_scorecard(x: pd.DataFrame):
    """An unfitted optbinning Scorecard over every column of `x`: optimal WoE binning, a
    logistic regression on the WoE columns, points scaled to 600 at odds 50:1 with 20 points
    to double the odds (higher is better)."""
    from optbinning import BinningProcess, Scorecard

    names = list(x.columns)
    cats = [c for c in names if not pd.api.types.is_numeric_dtype(x[c])]
    return Scorecard(
        binning_process=BinningProcess(names, categorical_variables=cats),
        estimator=LogisticRegression(max_iter=2000),
        scaling_method="pdo_odds",
        scaling_method_params={"pdo": 20, "odds": 50, "scorecard_points": 600},
    )
