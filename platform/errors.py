"""Errors the user can act on: the CLI prints them as one line, never as a traceback.

`did_you_mean` is the platform's one spelling hint; `validation_error` turns pydantic's ValidationError
into the one-line ConfigError every config and spec error is (`optim.lr='fast' must be a number`).
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any


class HiirError(Exception):
    """An expected failure (bad config, missing file, unreachable service) with a message saying what to do."""


class ConfigError(HiirError, ValueError):
    """A config or study field is unknown, mistyped or out of range. The message names the field."""


def did_you_mean(word: Any, candidates: Iterable[str], *, n: int = 3, cutoff: float = 0.6, otherwise: str = "") -> str:
    """`"; did you mean a, b?"` with the candidates closest to `word`, or `otherwise` when none is close."""
    close = difflib.get_close_matches(str(word), list(candidates), n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(close)}?" if close else otherwise


# pydantic error type -> the rule hiir states after `field=value`
_TYPE_RULES = {
    "int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "float_parsing": "must be a number",
    "bool_type": "must be true or false", "string_type": "must be a string", "string_too_short": "must not be empty",
    "list_type": "must be a list", "tuple_type": "must be a list",
}
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_MAPPING_TYPES = ("dict_type", "model_type", "model_attributes_type", "dataclass_type")


def validation_error(exc: Any, *, unknown: Callable[[str, tuple], str], root: type | None = None,
                     prefix: str = "") -> ConfigError:
    """The first error of a pydantic ValidationError as one ConfigError line: the dotted field
    (`prefix` + `data.val[1]`), its value and the rule. `unknown(name, loc)` words an unknown key (it knows
    which keys are valid there); `root`, the validated class, lets a range name both of its bounds."""
    error = exc.errors()[0]
    kind, loc, value, ctx = error["type"], tuple(error["loc"]), error.get("input"), error.get("ctx") or {}
    name = dotted((prefix,) + loc if prefix else loc)
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return ConfigError(unknown(name, loc))
    if kind == "missing":
        return ConfigError(f"{name} is missing")
    if kind == "value_error" and isinstance(ctx.get("error"), ConfigError):
        return ctx["error"]  # a validator's own message
    if kind in _MAPPING_TYPES:
        return ConfigError(f"{name or 'config'} must be a mapping, got {type(value).__name__}")
    if kind == "literal_error":
        allowed = ctx["expected"].replace("'", "").replace(" or ", ", ")
        return ConfigError(f"{name}={value!r} is not one of {allowed}")
    if kind in ("too_long", "too_short"):
        count = ctx.get("max_length") if kind == "too_long" else ctx.get("min_length")
        return ConfigError(f"{name}={value!r} must have {count} items")
    bound = next((b for b in _BOUNDS if b in ctx), None) if kind.startswith(("greater", "less")) else None
    if bound:
        return ConfigError(f"{name}={value!r} {_range_rule(root, loc) or f'must be {_BOUNDS[bound]} {ctx[bound]}'}")
    rule = _TYPE_RULES.get(kind, error["msg"].splitlines()[0])
    return ConfigError(f"{name}={value!r} {rule}")


def dotted(loc: Iterable[Any]) -> str:
    """('data', 'val', 1) -> 'data.val[1]'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _range_rule(root: type | None, loc: tuple) -> str | None:
    """`must be in [0, 1)` or `must be > 0`, from the Field constraints of the field at `loc` under `root`."""
    info = None
    for part in loc:
        fields = getattr(root, "__pydantic_fields__", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        root = info.annotation
    bounds = {b: getattr(m, b) for m in (info.metadata if info else ()) for b in _BOUNDS if hasattr(m, b)}
    low, high = [b for b in ("gt", "ge") if b in bounds], [b for b in ("lt", "le") if b in bounds]
    if low and high:
        return (f"must be in {'[' if low[0] == 'ge' else '('}{bounds[low[0]]}, "
                f"{bounds[high[0]]}{']' if high[0] == 'le' else ')'}")
    return " and ".join(f"must be {_BOUNDS[b]} {bounds[b]}" for b in low + high) or None
