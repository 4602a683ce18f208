"""The one exception type for user mistakes.

Anything raised as `MtsaeError` is printed by the CLI as a single line
(``error: …``) with a non-zero exit code and no traceback; everything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
from typing import Iterator


class MtsaeError(Exception):
    """A problem the user can fix: bad option, missing file, incompatible cache."""


# Why a write failed, in words, and what frees the way; anything else is reported by its strerror.
_WRITE_FAILURES = {
    errno.ENOSPC: ("no space left on the device", "free space"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota"),
    errno.EFBIG: ("file too large (the file-size limit, ulimit -f, was reached)", "raise the file-size limit"),
    errno.EROFS: ("read-only file system", "make it writable"),
    errno.EACCES: ("permission denied", "make it writable"),
    errno.EPERM: ("operation not permitted", "make it writable"),
}


def write_error(exc: OSError, what: str, then: str) -> MtsaeError:
    """A failed write as one line: what could not be written, why, and how to go on (``then``)."""
    reason, fix = _WRITE_FAILURES.get(exc.errno, (exc.strerror or str(exc), "fix the cause"))
    return MtsaeError(f"cannot write {what}: {reason}; {fix} and {then}")


@contextlib.contextmanager
def writing(what: str, then: str) -> Iterator[None]:
    """Inside it, a failed write (full disk, read-only folder) becomes `write_error`'s one line."""
    try:
        yield
    except OSError as exc:
        raise write_error(exc, what, then) from None
