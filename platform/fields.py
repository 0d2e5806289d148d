"""Typed field helpers shared by the train config and its model section: strict numbers, the pydantic
config that forbids unknown keys, and field comments as JSON Schema descriptions."""
from __future__ import annotations

import inspect
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticKnownError


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment that explains it in `cls`'s source (trailing, else the lines above).
    The JSON Schema shows them as descriptions, so an editor explains each key as the source does."""
    try:
        lines = inspect.getsource(cls).splitlines()[1:]
    except (OSError, TypeError):
        return {}
    out, above = {}, []
    for line in map(str.strip, lines):
        if line.startswith(("def ", "@")):
            break
        if line.startswith("#"):
            above.append(line.lstrip("# "))
            continue
        match = re.match(r"(\w+)\s*:[^#]*(?:#\s*(.*))?$", line)
        if match and (match[2] or above):
            out[match[1]] = match[2] or " ".join(above)
        above = []
    return out


def _describe(schema: dict[str, Any], cls: type) -> None:
    for name, text in field_comments(cls).items():
        schema.get("properties", {}).get(name, {}).setdefault("description", text)


STRICT = ConfigDict(extra="forbid", json_schema_extra=_describe)


def _no_bools(error: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if isinstance(value, bool):  # pydantic's lax mode would read `true` as 1
            raise PydanticKnownError(error)
        return value
    return BeforeValidator(check)


Int = Annotated[int, _no_bools("int_type")]        # 3, 3.0 and "3"; never true/false
Float = Annotated[float, _no_bools("float_type")]  # 2e-4 and "2e-4" (YAML reads 2e-4 as a string); never true/false
NonEmpty = Annotated[str, Field(min_length=1)]
