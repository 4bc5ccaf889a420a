"""The one error the exporter raises: its message names the step or column that failed."""


class ExportError(Exception):
    pass


class Unexpressible(ExportError):
    """A fitted step the feature schema cannot express; the raw-input form can still serve it."""
