"""Fixtures for the scorecardpy tests: a real daemon and gRPC stubs, shared with the export
package's tests.

These tests run in their own environment (requirements.txt): scorecardpy 0.1.9.7 needs
pandas < 3, which the export package does not use. The bundle is written by the export
package's own command line from its environment (MODELD_BUNDLE_CLI), from scorecardpy's file
form, exactly as a user of both would."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PYTHON = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PYTHON))

from tests.conftest import REPO, Daemon, modeld, pb  # noqa: E402, F401  (pb is a fixture)


def bundle_cli() -> str:
    return os.environ.get("MODELD_BUNDLE_CLI", str(REPO / ".venv" / "bin" / "modeld-bundle"))
