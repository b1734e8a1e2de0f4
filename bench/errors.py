"""The one exception type the CLI turns into a single line of advice and a non-zero exit."""


class BenchError(Exception):
    """A user-facing error: the message says what was wrong and what to do about it."""
