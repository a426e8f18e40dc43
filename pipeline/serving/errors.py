"""Typed serving errors, each mapped to one HTTP status."""


class ServingError(Exception):
    status = 500


class InvalidInput(ServingError):
    status = 400


class Unauthorized(ServingError):
    status = 401


class Forbidden(ServingError):
    status = 403


class ModelNotFound(ServingError):
    status = 404


class PayloadTooLarge(ServingError):
    status = 413


class UnsupportedMediaType(ServingError):
    status = 415


class NotReady(ServingError):
    status = 503
