"""Typed serving errors, each mapped to one HTTP status."""


class ServingError(Exception):
    status = 500
    headers: dict[str, str] = {}


class InvalidInput(ServingError):
    status = 400


class Unauthorized(ServingError):
    status = 401
    headers = {"www-authenticate": "Bearer"}


class Forbidden(ServingError):
    status = 403


class ModelNotFound(ServingError):
    status = 404


class MethodNotAllowed(ServingError):
    status = 405


class RequestTimeout(ServingError):
    status = 408
    headers = {"connection": "close"}  # the rest of the body may still come: drop it


class Conflict(ServingError):
    status = 409


class PayloadTooLarge(ServingError):
    status = 413
    headers = {"connection": "close"}  # the body was not read: drop the rest of it


class UnsupportedMediaType(ServingError):
    status = 415


class Unprocessable(ServingError):
    status = 422


class NotReady(ServingError):
    status = 503


class TooBusy(ServingError):
    status = 503
    headers = {"retry-after": "1"}


def brief(value, limit: int = 80) -> str:
    """``repr(value)``, clipped: an error message names what it got without echoing a huge
    input back. A value nested too deeply for ``repr`` (JSON parsers accept 1,024 levels,
    Python's recursion limit is about as deep) is shown by its first levels."""
    try:
        text = repr(value)
    except RecursionError:
        return f"{_outline(value, limit)}… (nested too deeply to show)"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _outline(value, limit: int) -> str:
    """The start of ``value``'s repr, following first items down without recursion."""
    parts: list[str] = []
    size = 0
    while size < limit:
        if isinstance(value, (list, tuple)):
            opening = "[" if isinstance(value, list) else "("
            if not value:
                parts.append(opening + ("]" if opening == "[" else ")"))
                break
            piece, value = opening, value[0]
        elif isinstance(value, dict):
            if not value:
                parts.append("{}")
                break
            key = next(iter(value))
            piece, value = f"{{{repr(key)[:limit]}: ", value[key]
        else:
            parts.append(repr(value)[:limit])
            break
        parts.append(piece)
        size += len(piece)
    return "".join(parts)[:limit]
