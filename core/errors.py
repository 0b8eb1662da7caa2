"""Error types shared by every stage; only the gRPC servicer and the CLI translate them."""


class RecsysError(Exception):
    """Base class for errors a user can act on (bad input, missing artifacts, bad config)."""


class InvalidRequestError(RecsysError, ValueError):
    """A request or argument is malformed; the message says which field and why."""


class UnknownItemError(RecsysError, KeyError):
    """An item id is not in the served catalogue."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DataError(RecsysError, ValueError):
    """Input data is missing, unreadable or does not match the expected schema."""


class ArtifactError(RecsysError):
    """An artifact is missing or unreadable."""


class ArtifactMismatchError(ArtifactError):
    """Artifacts that must belong together do not (checksum, version or shape mismatch)."""


class ModelNotReadyError(RecsysError):
    """A model is not loaded yet (serving is still starting or swapping versions)."""
