"""Errors that cross module boundaries, in a module light enough for any command line to import
(``encore.serving.access`` creates keys without loading the models' code)."""


class ServingError(Exception):
    """A request the served model cannot answer; carries the HTTP status, error code and field."""

    status = 400
    code = "bad_request"
    headers: dict | None = None

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field


class UnknownModelError(ServingError):
    status, code = 404, "unknown_model"


class UnsupportedError(ServingError):
    status, code = 400, "not_supported"


class ModelUnavailableError(ServingError):
    status, code = 503, "model_unavailable"
    headers = {"Retry-After": "10"}
