"""The exceptions of dion_ps: one per absl status code the client library returns.

Every error of the C++ client arrives as a subclass of DionError carrying the status code
(`code`, `code_name`) and the C++ message unchanged (str(error)). Where a Python built-in means
the same thing, the class derives from it too, so `except TimeoutError:` and
`except ValueError:` work as a Python user expects.
"""


class DionError(RuntimeError):
    """A non-OK status of the dion-ps client library."""

    code = 2  # absl::StatusCode::kUnknown
    code_name = "UNKNOWN"

    def __init__(self, message, code=None, code_name=None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if code_name is not None:
            self.code_name = code_name


class InvalidArgumentError(DionError, ValueError):
    """Bad input (a wrong shape, a non-finite gradient): nothing was changed."""


class DeadlineExceededError(DionError, TimeoutError):
    """A wait (flush, versions) did not finish in time."""


class FailedPreconditionError(DionError):
    """The shards hold another model (a mismatched table), or the client is closed."""


class UnavailableError(DionError, ConnectionError):
    """A shard stayed unreachable longer than give_up_after."""


class PermissionDeniedError(DionError, PermissionError):
    """The shard refused the token (or its worker id)."""


class UnauthenticatedError(DionError, PermissionError):
    """No valid token was presented."""


class DataLossError(DionError):
    """A push whose fate is unknown was dropped, or a checksum did not match."""


_BY_CODE = {
    3: InvalidArgumentError,
    4: DeadlineExceededError,
    7: PermissionDeniedError,
    9: FailedPreconditionError,
    14: UnavailableError,
    15: DataLossError,
    16: UnauthenticatedError,
}


def from_status(code, code_name, message):
    """The exception for an absl status (called by the extension)."""
    return _BY_CODE.get(code, DionError)(message, code, code_name)
