"""Filter the native libraries' start-up chatter out of the command's stderr.

TensorFlow and XLA log from C++ before absl is initialised, so TF_CPP_MIN_LOG_LEVEL does not
silence them (TF 2.21). The lines hide the one message a user needs (an error naming their
recipe key), so the CLI routes file descriptor 2 through a filter that drops only those.
"""

from __future__ import annotations

import os
import re
import sys
import threading

NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\)|"
    rb"[IWE]0000 [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard|cuda_platform|cuda_executor|"
    rb"cuda_dnn|cuda_fft|cuda_blas|cuda_diagnostics)\.cc:|"
    rb"[IWE]0000 [\d:. ]+\d+ util\.cc:\d+\] oneDNN supports DT_BOOL only|"
    rb"To enable the following instructions:|"
    rb"INFO: Created TensorFlow Lite XNNPACK delegate for CPU|"
    rb"An NVIDIA GPU may be present on this machine)"
)


class NativeLogFilter:
    """Route fd 2 through a pipe; forward every line but the known chatter."""

    def __init__(self) -> None:
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._saved is not None or os.environ.get("EDGEKD_NATIVE_LOGS") == "1":
            return
        sys.stderr.flush()
        self._saved = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(target=self._pump, args=(read_end,), daemon=True)
        self._thread.start()

    def _pump(self, read_end: int) -> None:
        assert self._saved is not None
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not NOISE.match(line):
                        os.write(self._saved, line + b"\n")
                # Partial lines (progress bars) pass through at once.
                if pending and not NOISE.match(pending) and len(pending) > 200:
                    os.write(self._saved, pending)
                    pending = b""
            if pending and not NOISE.match(pending):
                os.write(self._saved, pending)

    def stop(self) -> None:
        """Restore fd 2 and let the pump drain what is left."""
        if self._saved is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's last write end: the pump sees EOF
        if self._thread is not None:
            self._thread.join(timeout=2)
        os.close(self._saved)
        self._saved = None
