"""The reader's error types, and the wrapper that turns any parser failure into one of them.

Every failure of a load is a :class:`CheckpointError` whose message is one
line of at most a few hundred characters (:mod:`weights_convert.messages`);
:class:`UnsafeCheckpointError` marks a file that asks for code.  Inside the
unpickler a problem is first a :class:`_Malformed`, which
:func:`~.unpickler._unpickle` turns into a ``CheckpointError`` naming the file
and the pickle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..messages import one_line

_RESAVE_ADVICE = (
    "This loader accepts only tensors, dicts, lists, tuples, numbers and strings. "
    "Re-save just the weights with `torch.save(model.state_dict(), path)`."
)


class CheckpointError(ValueError):
    """The file is not a readable PyTorch checkpoint; the message (one line) says which file and why."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint asks for a Python global (code) outside the allowlist, or to build an object."""


class _Malformed(Exception):
    """Raised inside the unpickler; :func:`.unpickler._unpickle` adds the file and pickle to the message."""


@contextlib.contextmanager
def _reading(path: str, what: str) -> Iterator[None]:
    """Turn any low-level failure while doing ``what`` into a :class:`CheckpointError`."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as exc:  # untrusted bytes: any parser error means a bad file
        raise CheckpointError(
            f"{path}: {what} failed; the file is truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from exc
