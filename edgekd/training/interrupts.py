"""Ctrl-C that always stops training.

Python raises KeyboardInterrupt in the main thread between bytecodes. When the signal lands
while TensorFlow is inside a Python callback of its own (a `tf.data` generator feeding
`fit`), TensorFlow can turn the exception into an end-of-data error, and `fit` carries on
with the next epoch. So the handler also records the request, and the trainer's callback
raises it again at the next batch boundary.
"""

from __future__ import annotations

import signal
from types import FrameType

_requested = False


def _handler(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT through the recording handler (main thread only, as `signal` requires)."""
    global _requested
    _requested = False
    signal.signal(signal.SIGINT, _handler)


def requested() -> bool:
    """Whether Ctrl-C was pressed since `install()`."""
    return _requested
