"""The one exception type the CLI turns into a single line of advice and a non-zero exit."""


class BenchError(Exception):
    """A user-facing error: the message says what was wrong and what to do about it."""


def class_path(obj: object) -> str:
    """The import path of ``obj``'s class, as configs and checkpoints name it."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
