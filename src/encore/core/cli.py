"""How a user's mistake ends a command line: one line on standard error, not a traceback."""

import contextlib
import sys

import ray

from encore.core.errors import EncoreError

#: Errors that mean the input or the store is wrong, not the code: Encore's own, a missing file, a
#: malformed table. Anything else is a bug and keeps its traceback.
USER_ERRORS = (EncoreError, ValueError, FileNotFoundError)


@contextlib.contextmanager
def user_errors(*more: type[Exception]):
    """Turn a user error (``USER_ERRORS`` and ``more``) into one line ``error: ...`` on standard error
    and exit status 2, as argparse does for a bad argument."""
    try:
        yield
    except (*USER_ERRORS, *more) as error:
        # Raised in a Ray task, the error arrives wrapped, its str() a remote traceback: say the cause.
        cause = error.cause if isinstance(error, ray.exceptions.RayTaskError) else error
        print(f"error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None
