"""The thread that runs taco_node's windows, outside the ROS executor.

A window takes milliseconds to seconds of Python and torch work. Run as an executor callback, it
held the executor's attention while it ran: rclpy's MultiThreadedExecutor re-submits a ready
callback until a pool thread starts it, so with a window holding the GIL in stretches the
executor thread spun at 100 % of a core and, through the GIL, slowed the window itself (measured
in the node tests: 40 s of wall time for 1.8 s of CPU per window). With the windows on a thread
of their own, every executor callback is short, so a SingleThreadedExecutor serves the inputs,
the services and the timers while a window runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class WindowWorker:
    """Calls ``step`` every ``period`` seconds on its own thread until :meth:`stop`.

    An exception escaping ``step`` is handed to ``on_error`` (called in the ``except`` block, so
    ``traceback.format_exc()`` shows it) and the loop goes on: one failed window must not stop
    the node's windows.
    """

    def __init__(self, step: Callable[[], None], period: float,
                 on_error: Callable[[Exception], None], name: str = 'taco_windows') -> None:
        self._step = step
        self._period = float(period)
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the window in flight (if any) and wait for the thread, up to ``timeout``."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._step()
            except Exception as exc:   # reported, and the next window is tried
                self._on_error(exc)
