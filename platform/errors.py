"""Errors the user can act on: the CLI prints them as one line, never as a traceback."""


class HiirError(Exception):
    """An expected failure (bad config, missing file, unreachable service) with a message saying what to do."""


class ConfigError(HiirError, ValueError):
    """A config or study field is unknown, mistyped or out of range. The message names the field."""
