"""Fixtures for the consultation record's tests: real SQLite and real PostgreSQL.

PostgreSQL is the server at ``NOTIFIER_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``, trust auth). One database named
``g_test_<random>`` is created per test run and dropped at the end; every test starts from
empty tables. Where no server answers, the PostgreSQL cases are skipped, saying why.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from notifier.store import ConsultationRecord, OccurrenceRecord, Settled, Store, make_engine, metadata, upgrade

SERVER = os.environ.get("NOTIFIER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
DIALECTS = ("sqlite", "postgresql")


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(SERVER, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server answers at {SERVER.split('@')[-1]}: {str(exc).strip()}")


def _url(name: str) -> str:
    base, _, _ = SERVER.rpartition("/")
    return f"{base}/{name}"


class PostgresDatabases:
    """Creates throwaway databases on the test server and drops them all at the end."""

    def __init__(self) -> None:
        # NOTIFIER_TEST_POSTGRES_PREFIX: engineers sharing one server each keep to their own names.
        self.prefix = f"{os.environ.get('NOTIFIER_TEST_POSTGRES_PREFIX', 'g_test_')}{secrets.token_hex(4)}"
        self.made: list[str] = []

    def create(self, suffix: str = "") -> str:
        """A new, empty database; its postgresql:// URL."""
        name = f"{self.prefix}{suffix}"
        with _admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return _url(name)

    def drop_all(self) -> None:
        """Drop every database made."""
        if not self.made:
            return
        with _admin() as admin:
            for name in self.made:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    """The run's PostgreSQL databases (skips where no server answers)."""
    _admin().close()
    databases = PostgresDatabases()
    try:
        yield databases
    finally:
        databases.drop_all()


@pytest.fixture(scope="session")
def postgres_record(postgres: PostgresDatabases) -> str:
    """The run's migrated PostgreSQL database (tests empty its tables first)."""
    url = postgres.create()
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(params=DIALECTS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL (as a user would set NOTIFIER_DATABASE_URL) of a migrated, empty database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'record.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        return url
    url = str(request.getfixturevalue("postgres_record"))
    engine = make_engine(url)
    with engine.begin() as connection:
        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture(params=DIALECTS)
def blank_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a database with no schema at all."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'blank.db'}"
    databases: PostgresDatabases = request.getfixturevalue("postgres")
    return databases.create(f"_blank_{secrets.token_hex(3)}")


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    """A :class:`Store` on a migrated, empty database of each dialect."""
    opened = Store(make_engine(database))
    try:
        yield opened
    finally:
        opened.close()


SOC = "soc-strategy-2019"
OPENS = datetime(2019, 7, 9, 8, 0, tzinfo=UTC)  # 09:00 BST
CLOSES = datetime(2019, 8, 15, 22, 59, tzinfo=UTC)  # 23:59 BST


def occurrence(store: Store, event: str, fired_at: datetime, *, consultation: str = SOC, number: int = 1) -> str:
    """Record an occurrence of ``event`` fired at ``fired_at``; its id."""
    occurrence_id = f"{consultation}:{event}:{number}"
    store.record_occurrence(
        OccurrenceRecord(occurrence_id, consultation, event, number, fired_at, fired_at, state="done")
    )
    return occurrence_id


def seed(store: Store, *, consultation: str = SOC, closes: datetime = CLOSES) -> None:
    """A small consultation: e-mails to two lists over two events (one failure, one suppressed)
    and a post on pcc-x."""
    store.record_consultation(
        ConsultationRecord(
            consultation,
            "Serious and Organised Crime Strategy",
            "https://www.pcc.example/soc",
            "Europe/London",
            OPENS,
            closes,
        )
    )
    store.record_lists({"csp": "Community Safety Partnerships", "nhs": "NHS"})
    opened = occurrence(store, "opened", OPENS, consultation=consultation)
    reminder = occurrence(store, "reminder", closes - timedelta(days=7), consultation=consultation)
    for occ, at in ((opened, OPENS), (reminder, closes - timedelta(days=7))):
        store.archive(
            [
                Settled(
                    occ,
                    "email",
                    "jane@csp.example",
                    "sent",
                    at,
                    name="Jane",
                    lists=("csp",),
                    attempts=1,
                    message_id=f"<{occ}.1@pcc.example>",
                    updated=at,
                    sent_at=at,
                ),
                Settled(
                    occ,
                    "email",
                    "both@nhs.example",
                    "sent",
                    at,
                    lists=("csp", "nhs"),
                    attempts=1,
                    updated=at,
                    sent_at=at + timedelta(minutes=1),
                ),
                Settled(
                    occ,
                    "email",
                    "gone@nhs.example",
                    "failed",
                    at,
                    lists=("nhs",),
                    attempts=1,
                    last_error="550 5.1.1 no such user",
                    updated=at,
                ),
                Settled(occ, "email", "quiet@csp.example", "suppressed", at, lists=("csp",), updated=at),
                Settled(
                    occ,
                    "pcc-x",
                    "pcc-x",
                    "sent",
                    at,
                    attempts=1,
                    provider_id="1234",
                    updated=at,
                    sent_at=at + timedelta(minutes=2),
                ),
            ]
        )
