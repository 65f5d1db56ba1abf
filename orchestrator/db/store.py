"""The database's composition root: one engine and session factory, migrated on open, and a repository per
aggregate over them (``store.requests``, ``store.tenants``, ``store.leases``, ``store.evals``,
``store.calibration``, ``store.prices``). Every repository method is ``async``; sync code calls them through
``asyncio.run`` or its own event loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db import migrate
from orchestrator.db.calibration import Calibration
from orchestrator.db.evals import Evals
from orchestrator.db.leases import Leases
from orchestrator.db.prices import Prices
from orchestrator.db.requests import Requests
from orchestrator.db.tenants import Tenants


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the dashboard read while requests write. Under load (dozens of requests recording sub-calls
    # on a busy disk) writers queue for the lock for seconds: busy_timeout must outlast that, and
    # synchronous=NORMAL (safe in WAL against a process crash) keeps each commit from waiting on an fsync.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Store:
    """SQL storage of the service: requests and their sub-calls, tenants, server leases, evaluations,
    calibration sets and prices, one repository each, sharing one session factory."""

    def __init__(self, engine: SAEngine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self.requests = Requests(self._sessions)
        self.tenants = Tenants(self._sessions)
        self.leases = Leases(self._sessions)
        self.evals = Evals(self._sessions)
        self.calibration = Calibration(self._sessions)
        self.prices = Prices(self._sessions)

    @classmethod
    def from_url(cls, url: str) -> Store:
        """The store of database ``url``, migrated to the newest schema (an up-to-date one is left as it is)."""
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        migrate.upgrade(engine)  # the migrations own the schema; an up-to-date database is left as it is
        return cls(engine)

    def session(self) -> Session:
        """A raw ORM session (tests and audits that query tables directly)."""
        return self._sessions()
