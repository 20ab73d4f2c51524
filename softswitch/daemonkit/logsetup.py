"""Logging for both daemons: the main loop enqueues, a writer thread writes.

Why: a log line written from the main loop can block on a full pipe to the
journal or a slow disk, and the main loops must never block (DESIGN.md,
principle 3). So every logger sends records through a stdlib
``QueueHandler`` into an unbounded ``queue.SimpleQueue`` (putting never
blocks), and a ``QueueListener`` thread writes them to stderr (the journal
under systemd, which adds its own timestamps) or to a file.

A file is reopened on request (the daemons call ``reopen()`` on SIGHUP, after
logrotate has moved the old file away). The request travels through the same
queue as the records, so the writer thread performs it in order: everything
logged before the SIGHUP lands in the old file, everything after in the new.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
from typing import TextIO

__all__ = ["LogSetup", "ReopenableFileHandler", "setup_logging"]

_STDERR_FORMAT = "%(levelname)s %(name)s: %(message)s"
_FILE_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


_REOPEN = "softswitch_reopen_log"


class ReopenableFileHandler(logging.FileHandler):
    """A FileHandler whose file can be closed and opened again by path."""

    def handle(self, record: logging.LogRecord) -> bool:
        """A queued reopen request is performed here, on the writer thread."""
        if getattr(record, _REOPEN, False):
            self.reopen()
            return True
        return super().handle(record)

    def reopen(self) -> None:
        """Open the path afresh (a rotated file is left to logrotate)."""
        self.acquire()
        try:
            if self.stream is not None:
                try:
                    self.stream.flush()
                finally:
                    self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


class LogSetup:
    """The installed logging pipeline of one daemon process.

    ``start()`` replaces the root logger's handlers with the QueueHandler and
    starts the writer thread; ``stop()`` flushes every queued record and
    joins it (call it last at shutdown).
    """

    def __init__(self, level: str = "info", file: str | None = None, stream: TextIO | None = None):
        self.level = getattr(logging, level.upper(), logging.INFO)
        self.file = file
        self.queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self.handler: logging.Handler
        if file:
            self.handler = ReopenableFileHandler(file, encoding="utf-8", delay=False)
            self.handler.setFormatter(logging.Formatter(_FILE_FORMAT))
        else:
            self.handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
            self.handler.setFormatter(logging.Formatter(_STDERR_FORMAT))
        self.listener = logging.handlers.QueueListener(
            self.queue,
            self.handler,
            respect_handler_level=False,
        )
        self._started = False
        self._saved: tuple[list[logging.Handler], int] = ([], logging.WARNING)
        self._queue_handler: logging.Handler | None = None

    def start(self) -> LogSetup:
        """Route the root logger through the queue and start the writer thread."""
        root = logging.getLogger()
        self._saved = (list(root.handlers), root.level)
        for old in self._saved[0]:
            root.removeHandler(old)
        self._queue_handler = logging.handlers.QueueHandler(self.queue)
        root.addHandler(self._queue_handler)
        root.setLevel(self.level)
        self.listener.start()
        self._started = True
        return self

    def reopen(self) -> None:
        """Reopen the log file (SIGHUP after rotation); stderr needs nothing.

        Queued behind the records already logged, never blocking the caller.
        """
        if isinstance(self.handler, ReopenableFileHandler):
            if self._started:
                marker = logging.makeLogRecord({_REOPEN: True, "msg": "reopen"})
                self.queue.put(marker)
            else:
                self.handler.reopen()

    def stop(self) -> None:
        """Write out everything queued, stop the thread, close the file.

        The root logger gets back the handlers it had before ``start()``.
        """
        if self._started:
            self._started = False
            root = logging.getLogger()
            if self._queue_handler is not None:
                root.removeHandler(self._queue_handler)
            handlers, level = self._saved
            for h in handlers:
                root.addHandler(h)
            root.setLevel(level)
            self.listener.stop()
            self.handler.close()


def setup_logging(level: str = "info", file: str | None = None) -> LogSetup:
    """Install and start the queue-based pipeline; returns it for reopen/stop."""
    return LogSetup(level, file).start()
