"""The one error type a user should see: a clear one-line message, exit code 2, no traceback."""


class BotError(Exception):
    """Bad input or an impossible request, said in one line that names the file and the problem."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """A library error's first line (cut to `limit` characters) for a one-line message; its type when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """The user-facing line of a BotError, also when a DataLoader worker re-raised it inside its own text."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1]
    marker = "BotError: "
    return last.split(marker, 1)[1] if marker in last else last
