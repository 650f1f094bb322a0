"""Encore's own errors, in a module light enough for any command line to import (``encore.serving.access``
creates keys without loading the models' code).

Every error Encore raises on purpose is an :class:`EncoreError`, whose message says what went wrong and
where, so that a command line reports it without a traceback (``encore.core.runtime.user_errors``). Two branches:
:class:`InputError`, input that cannot be used (a file, a record, a name), and :class:`ServingError`, a
request the service answers with an HTTP status and error code.
"""

import copyreg
from typing import ClassVar


class EncoreError(Exception):
    """An error Encore raises on purpose; the message says what went wrong and where."""


class InputError(EncoreError):
    """Input that cannot be used as it is: the message names the file, record or field at fault."""


class ServingError(EncoreError):
    """A request the service cannot answer, as its HTTP answer: ``status``, error ``code``, ``headers`` and
    the request ``field`` at fault. A subclass declares the first three as class keywords::

        class Gone(ServingError, status=410, code="gone"): ...

    Class attributes, not the instance's: an error raised in a replica reaches the ingress as Ray's
    wrapper of it, which takes class attributes from the error's class and the rest from the error."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    headers: dict[str, str] | None = None

    def __init_subclass__(
        cls, *, status: int | None = None, code: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init_subclass__()
        cls.status = status or cls.status
        cls.code = code or cls.code
        cls.headers = headers or cls.headers

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field

    def __reduce__(self):
        # Pickled from a replica to the ingress: rebuilt from its attributes, without calling the __init__
        # of a subclass, whose arguments differ.
        return copyreg.__newobj__, (type(self), self.message), self.__dict__


class UnknownModelError(ServingError, status=404, code="unknown_model"): ...


class NotSupportedError(ServingError, status=400, code="not_supported"):
    """The model cannot do what was asked (popularity has no explanations, for example)."""


class ModelUnavailableError(ServingError, status=503, code="model_unavailable", headers={"Retry-After": "10"}): ...
