"""User errors.

A RafaleError is a mistake the user can fix (a bad config value, a missing file, an unknown model name).
The CLI prints its message as one line and exits with code 2, without a traceback. Anything else is a bug
and keeps its traceback.

Messages follow one shape: "<where>: <what is wrong>; <what was expected or what to do>".
"""


class RafaleError(Exception):
    """A mistake in what the user gave rafale. Printed as one line, exit code 2."""


class ConfigError(RafaleError):
    """A bad config file, key, value or command-line override."""


class DataError(RafaleError):
    """A missing, empty or malformed data source or tokenizer."""


class ModelError(RafaleError):
    """An unknown model name, or weights that do not fit the model."""


class RunStateError(RafaleError):
    """A run directory in a state that forbids the action (finished run without FORCE=1, ...)."""
