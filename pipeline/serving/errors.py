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
    input back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
