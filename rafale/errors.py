"""User errors.

A RafaleError is a mistake the user can fix (a bad config value, a missing file, an unknown model name).
The CLI prints its message as one line and exits with code 2, without a traceback. Anything else is a bug
and keeps its traceback.

Messages follow one shape: "<where>: <what is wrong>; <what was expected or what to do>".

Exit codes of the CLI: 0 success; 1 a bug (with its traceback) or a failed DEBUG=1 verdict; 2 a RafaleError
(including a training loss that became NaN/Inf: rafale/train/guards.py) or a bad command-line argument;
130 / 143 interrupted by SIGINT / SIGTERM (after saving what could be saved).
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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (not a user mistake). A KeyboardInterrupt, so every cleanup path that handles Ctrl-C
    also handles SIGTERM. The CLI exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int = 2):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum
