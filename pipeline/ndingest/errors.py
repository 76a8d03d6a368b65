"""One exception hierarchy; the CLI turns it into one line and an exit code."""
from __future__ import annotations


class NdingestError(Exception):
    """A problem the user can fix; str(exc) is the one line they will see."""

    exit_code = 1


class SpecError(NdingestError, ValueError):
    """A bad key or value in the spec or on the command line."""

    exit_code = 2


class BadBox(SpecError):
    """A box whose begin lies past its end on some axis (coordinates from a user or a client)."""


class MissingExtra(SpecError):
    """A command needs an optional dependency that is not installed (e.g. `view`'s)."""


class SourceError(NdingestError, OSError):
    """An input volume that is missing, unreadable, ambiguous or disagrees with the spec."""

    exit_code = 3


class SourceChanged(SourceError):
    """The source differs from the one whose blocks were already written."""


class FetchRefused(NdingestError):
    """A job posted to `serve` reached for what its policy does not allow (`fetchpolicy`): a
    file outside --allow-files, an address --fetch-from does not name, a body past its cap,
    an HDF5 dataset stored in other files. Not an OSError, so that no retry loop (urllib3's,
    a body read's) takes it for a broken connection and tries again."""

    exit_code = 3


class CatalogConflict(NdingestError):
    """The catalog already holds a dataset, project, token or channel with other values."""

    exit_code = 4


class VerifyMismatch(NdingestError):
    """What the store holds differs from the source or from a block's marker."""

    exit_code = 5


class AlreadyRunning(NdingestError):
    """Another local-scheduler run holds this store and spec."""

    exit_code = 6


class StoreError(NdingestError, OSError):
    """The store cannot be read or written (disk full, read-only, corrupt metadata)."""

    exit_code = 7


class RemoteError(NdingestError):
    """A remote server answered with an error or could not be reached."""

    exit_code = 8


class RequestError(NdingestError):
    """A request to `ndingest serve` that cannot be served as asked; the server answers
    `status` with str(exc) as its one line (never a traceback)."""

    exit_code = 2
    status = 400


class NotFound(RequestError):
    """No such token, channel, resource or file."""

    status = 404


class Unauthorized(RequestError):
    """No key, or an empty one, where a key is needed."""

    status = 401


class Forbidden(RequestError):
    """A wrong key, or a write to a readonly channel."""

    status = 403


class StateConflict(RequestError):
    """The request conflicts with the resource's state (e.g. setPropagate/1/ while built)."""

    status = 409


class ChannelGone(StateConflict):
    """The channel a write waited for was deleted meanwhile (its folder renamed away)."""


class NotSupported(RequestError):
    """A request this server cannot serve as it is set up (e.g. autoIngest with a
    PostgreSQL catalog)."""

    status = 501


class BodyTooLarge(RequestError):
    """A request body past the server's limit, refused before it is read whole."""

    status = 413


class Busy(RequestError):
    """The server's memory budget stayed taken for as long as a request may wait: 503, and
    `Retry-After` says when to ask again."""

    status = 503

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class InternalError(NdingestError):
    """A bug (not an NdingestError) in a task, replayed from its failure record in the
    process that started the run; `traceback` is the task's, for the log file the CLI
    names (or prints under --debug)."""

    exit_code = 1

    def __init__(self, message: str, *, traceback: str):
        super().__init__(message)
        self.traceback = traceback
