"""A real CentralDB whose chosen calls fail as the database's own driver fails them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from central_sync.db import CentralDB

FAILURE = "disk I/O error (injected by the test)"


def driver_error(dialect: str) -> Exception:
    """What the database's driver raises when the database fails under a call."""
    if dialect == "postgresql":
        import psycopg

        return psycopg.OperationalError(FAILURE)
    return sqlite3.OperationalError(FAILURE)


class FailingDB(CentralDB):
    """CentralDB where `method` raises the driver's error whenever `fails(*args)` is true."""

    def __init__(self, target: str, method: str,
                 fails: Callable[..., bool] = lambda *_args: True) -> None:
        super().__init__(target)
        real = getattr(self, method)

        def failing(*args: Any, **kwargs: Any) -> Any:
            if fails(*args, **kwargs):
                raise driver_error(self.dialect)
            return real(*args, **kwargs)

        setattr(self, method, failing)
