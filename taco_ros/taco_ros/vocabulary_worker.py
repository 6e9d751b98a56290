"""Encodes a new vocabulary off the ROS executor.

A new word costs both text encoders a forward pass over its prompt: on a robot's CPU with the
full-size models, a list of a hundred new words takes seconds. Done in the parameter callback, that
held taco_node's single-threaded executor: camera frames and audio chunks waited in their DDS
queues meanwhile, and the best-effort ones and whatever overflowed the queues were lost. Here the
callback only hands the words over; a thread encodes them and the pipeline swaps its word bank in
one assignment, so a window in flight keeps the words it started with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class VocabularyWorker:
    """Runs ``apply(words)`` on a thread of its own for the newest requested word list.

    Requests made while one is being applied replace each other: only the newest is applied next
    (a user who sets three lists in a row wants the last one). The thread exists only while there
    is work. An exception from ``apply`` goes to ``on_error`` (called in the ``except`` block) and
    the next request is still served.
    """

    def __init__(self, apply: Callable[[list[str]], None],
                 on_error: Callable[[Exception], None], name: str = 'taco_vocabulary') -> None:
        self._apply = apply
        self._on_error = on_error
        self._name = name
        self._changed = threading.Condition()
        self._pending: list[str] | None = None
        self._running = False

    def request(self, words: list[str]) -> None:
        """Apply ``words`` after the request in progress (if any); returns at once."""
        with self._changed:
            self._pending = list(words)
            if not self._running:
                self._running = True
                threading.Thread(target=self._drain, name=self._name, daemon=True).start()

    @property
    def busy(self) -> bool:
        """Whether a request is waiting or being applied."""
        with self._changed:
            return self._running

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every request made so far is applied; False if ``timeout`` ran out first."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._running, timeout)

    def _drain(self) -> None:
        while True:
            with self._changed:
                words, self._pending = self._pending, None
                if words is None:
                    self._running = False
                    self._changed.notify_all()
                    return
            try:
                self._apply(words)
            except Exception as exc:   # reported; the node keeps the words it had
                self._on_error(exc)
