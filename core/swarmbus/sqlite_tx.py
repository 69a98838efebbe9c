"""Nested SQLite transactions for the local databases (the message store, the task board).

:class:`NestedTransactions` gives a class that holds ``_db`` (a :class:`sqlite3.Connection` in
autocommit mode, ``isolation_level=None``), ``_lock`` (a :class:`threading.RLock`) and ``_depth``
(0 when idle) a :meth:`~NestedTransactions.transaction` context manager: the outermost use is
``BEGIN IMMEDIATE`` (writers are serialised, so a read-then-write inside cannot race another
writer), nested uses are savepoints, so a failing inner part rolls back alone and the caller
decides whether the outer one goes on. It commits on normal exit and rolls back on any exception,
which propagates (a database failure as :class:`sqlite3.Error`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class NestedTransactions:
    """See the module docstring. ``_savepoint`` names the savepoints (``<prefix><depth>``)."""

    _db: sqlite3.Connection
    _lock: threading.RLock
    _depth: int
    _savepoint = "sp"

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction, or a savepoint inside the one in progress; yields the connection."""
        with self._lock:
            depth = self._depth
            name = f"{self._savepoint}{depth}"
            self._db.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {name}")
            self._depth = depth + 1
            try:
                yield self._db
            except BaseException:
                self._depth = depth
                with contextlib.suppress(sqlite3.Error):  # the database may already have rolled back
                    if depth == 0:
                        self._db.execute("ROLLBACK")
                    else:
                        self._db.execute(f"ROLLBACK TO {name}")
                        self._db.execute(f"RELEASE {name}")
                raise
            self._depth = depth
            if depth:
                self._db.execute(f"RELEASE {name}")
                return
            try:
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
