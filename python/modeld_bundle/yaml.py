"""A small, stable YAML writer for bundle files: same input, same bytes, every time."""

from __future__ import annotations

import json
import math
from typing import Any


def dump(obj: Any) -> str:
    lines: list[str] = []
    _write(obj, 0, lines)
    return "".join(lines)


def _write(obj: Any, indent: int, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:\n")
                _write(v, indent + 2, out)
            else:
                out.append(f"{pad}{k}: {scalar(v)}\n")
        return
    for item in obj:
        if isinstance(item, dict) and item:
            first = True
            for k, v in item.items():
                lead = f"{pad}- " if first else f"{pad}  "
                first = False
                if isinstance(v, (dict, list)) and v:
                    out.append(f"{lead}{k}:\n")
                    _write(v, indent + 4, out)
                else:
                    out.append(f"{lead}{k}: {scalar(v)}\n")
        else:
            out.append(f"{pad}- {scalar(item)}\n")


def scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        if math.isnan(v):
            return ".nan"
        if math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
        return repr(v)
    if isinstance(v, int):
        return repr(v)
    if isinstance(v, list) and v:
        # A list inside a list (a bin group): a flow sequence, which JSON's array form is.
        return json.dumps(v)
    if isinstance(v, (dict, list)):
        return "{}" if isinstance(v, dict) else "[]"
    return json.dumps(str(v))  # a JSON string is a valid YAML double-quoted scalar
