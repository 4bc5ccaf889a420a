"""The one error the exporter raises: its message names the step or column that failed."""


class ExportError(Exception):
    pass
