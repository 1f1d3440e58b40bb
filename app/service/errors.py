"""Errors the service raises for the API to turn into HTTP answers."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Invalid(ServiceError):
    status_code = 422


class Unavailable(ServiceError):
    status_code = 503


class Busy(ServiceError):
    """Too much in flight: refused at once, to be retried after `retry_after` seconds (429)."""

    status_code = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Starting(Unavailable):
    """The process is still starting (loading the model, building C₀, replaying the log): retry
    after `retry_after` seconds; `startup` is the start-up's state, as /ready shows it."""

    def __init__(self, message: str, startup: dict, retry_after: int = 5):
        super().__init__(message)
        self.startup = startup
        self.retry_after = retry_after
