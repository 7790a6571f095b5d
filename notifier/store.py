"""The consultation record: a relational database of who was told what, and when.

Redis (:mod:`notifier.ledger`) is the working state that makes every side effect happen once;
this database is the record a public body keeps as evidence, and what ``notifier evidence``
reads. It holds the consultations and lists as they were configured, every event occurrence,
every delivery's final state, suppressions with their source, responses, an audit log and the
console's users.

``NOTIFIER_DATABASE_URL`` picks the database: unset, a SQLite file ``$NOTIFIER_DATA_DIR/notifier.db``
that is created and migrated on first use; ``postgresql://…`` in production (psycopg 3), whose
schema only ``notifier db upgrade`` changes (:meth:`Store.open` refuses while it is behind).
The migrations (Alembic) ship in ``notifier/migrations``.

Times are stored as UTC and always read back as aware UTC datetimes, on both dialects.
"""

from __future__ import annotations

import fcntl
import operator
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    literal,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.types import TypeDecorator

from notifier.columns import REPORT_COLUMNS as REPORT_COLUMNS  # re-exported: the evidence rows' columns
from notifier.config import Config, Settings
from notifier.errors import SchemaBehindError, StoreError
from notifier.ledger import Occurrence

MIGRATIONS = Path(__file__).with_name("migrations")
SuppressionSource = Literal["config", "unsubscribe", "bounce", "manual"]
SOURCES: tuple[str, ...] = ("config", "unsubscribe", "bounce", "manual")
ROLES: tuple[str, ...] = ("viewer", "sender", "admin")
#: The statuses that count as told: the message reached the recipient's server.
TOLD: tuple[str, ...] = ("sent",)
#: Rows per INSERT when archiving: bounded memory, and well under SQLite's 32,766 parameters.
BATCH = 2_000


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime stored as UTC (``timestamptz`` on PostgreSQL, naive UTC text on SQLite)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes (whose zone is a guess) and store the rest as UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to the record: say its zone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Every time read back is aware UTC."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

consultations = Table(
    "consultations",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("title", Text, nullable=False),
    Column("url", Text, nullable=True),
    Column("timezone", String(64), nullable=False),
    Column("opens", UTCDateTime, nullable=True),
    Column("closes", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("told", Integer, nullable=True),  # stakeholders told in all, kept when pruned
    Column("pruned_at", UTCDateTime, nullable=True),
)

lists = Table(
    "lists",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("name", Text, nullable=True),
)

occurrences = Table(
    "occurrences",
    metadata,
    Column("id", String(500), primary_key=True),
    Column("consultation", String(200), nullable=False),
    Column("event", String(200), nullable=False),
    Column("number", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("fired_at", UTCDateTime, nullable=False),
    Column("late", Boolean, nullable=False, default=False),
    Column("state", String(20), nullable=False),
    Column("rehearsal", Boolean, nullable=False, default=False),
    # The closes the occurrence told (notifier.extension), and what an ``extended`` one moved it from.
    Column("closes", UTCDateTime, nullable=True),
    Column("previous_closes", UTCDateTime, nullable=True),
    UniqueConstraint("consultation", "event", "number"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("occurrence", String(500), ForeignKey("occurrences.id", ondelete="CASCADE"), primary_key=True),
    Column("channel", String(200), primary_key=True),
    Column("recipient", String(320), primary_key=True),
    Column("name", Text, nullable=True),
    Column("lists", Text, nullable=False, default=""),  # list ids, space-separated
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("provider_id", Text, nullable=True),
    Column("message_id", Text, nullable=True),
    # The delivery key of the Message-ID (``<key@domain>``): what a bounce names it by, indexed.
    Column("message_key", String(32), nullable=True),
    Column("url", Text, nullable=True),
    Column("created", UTCDateTime, nullable=False),
    Column("updated", UTCDateTime, nullable=True),
    Column("sent_at", UTCDateTime, nullable=True),
)

delivery_counts = Table(
    "delivery_counts",
    metadata,
    Column("occurrence", String(500), ForeignKey("occurrences.id", ondelete="CASCADE"), primary_key=True),
    Column("channel", String(200), primary_key=True),
    Column("status", String(20), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("first_at", UTCDateTime, nullable=True),  # the earliest sent_at
)

list_counts = Table(
    "list_counts",
    metadata,
    Column("consultation", String(200), primary_key=True),
    Column("list_id", String(200), primary_key=True),
    Column("told", Integer, nullable=False),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("email", String(320), primary_key=True),  # lower case
    Column("source", String(20), nullable=False),
    Column("detail", Text, nullable=True),
    Column("at", UTCDateTime, nullable=False),
    CheckConstraint("source IN ('config', 'unsubscribe', 'bounce', 'manual')", name="source"),
)

soft_bounces = Table(
    "soft_bounces",
    metadata,
    Column("email", String(320), primary_key=True),  # lower case
    Column("message_key", String(32), primary_key=True),  # each delivery counted once
    Column("at", UTCDateTime, nullable=False),
)

responses = Table(
    "responses",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("consultation", String(200), nullable=False),
    Column("key", String(700), nullable=False),  # what makes it the same response on a re-import
    Column("email", String(320), nullable=False),
    Column("name", Text, nullable=True),
    Column("organisation", Text, nullable=True),
    Column("received", UTCDateTime, nullable=True),
    Column("reference", String(200), nullable=True),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("acknowledged_at", UTCDateTime, nullable=True),
    UniqueConstraint("consultation", "key"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(320), nullable=False),  # "cli" or a console user's e-mail
    Column("action", String(100), nullable=False),
    Column("consultation", String(200), nullable=True),
    Column("detail", Text, nullable=True),
    Index(None, "at"),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True),  # lower case
    Column("role", String(10), nullable=False),
    Column("password_hash", Text, nullable=True),  # argon2
    Column("failed_signins", Integer, nullable=False, default=0),
    Column("locked_until", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint("role IN ('viewer', 'sender', 'admin')", name="role"),
)

Index(None, occurrences.c.consultation)
#: The console's deliveries table filtered by status reads this in (channel, recipient) order.
Index(None, deliveries.c.occurrence, deliveries.c.status, deliveries.c.channel, deliveries.c.recipient)
#: A bounce finds its delivery by the key of its Message-ID.
Index(None, deliveries.c.message_key)


# ---------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsultationRecord:
    """A consultation as it was configured when last recorded."""

    id: str
    title: str
    url: str | None
    timezone: str
    opens: datetime | None
    closes: datetime | None
    told: int | None = None
    pruned_at: datetime | None = None


#: One firing of an event as recorded: the ledger's own :class:`~notifier.ledger.Occurrence` (the
#: same fields and id, ``<consultation>:<event>:<number>``), not a copy of it.
OccurrenceRecord = Occurrence


@dataclass(frozen=True, slots=True)
class Settled:
    """A delivery's final state, as archived: keyed by (occurrence, channel, recipient)."""

    occurrence: str
    channel: str
    recipient: str
    status: str
    created: datetime
    name: str | None = None
    lists: tuple[str, ...] = ()
    attempts: int = 0
    last_error: str | None = None
    provider_id: str | None = None
    message_id: str | None = None
    url: str | None = None
    updated: datetime | None = None
    sent_at: datetime | None = None

    @classmethod
    def from_record(cls, occurrence: str, record: Any, *, message_id: str | None = None) -> Settled:
        """The settled form of a :class:`notifier.ledger.Record` (ISO text times become datetimes)."""
        return cls(
            occurrence=occurrence,
            channel=record.channel,
            recipient=record.recipient,
            status=record.status,
            created=_when(record.created) or datetime.now(UTC),
            name=record.name,
            lists=tuple(record.lists),
            attempts=record.attempts,
            last_error=record.error,
            provider_id=record.provider_id,
            message_id=message_id,
            url=record.url,
            updated=_when(record.updated),
            sent_at=_when(record.sent_at),
        )

    @property
    def message_key(self) -> str | None:
        """The delivery key in its Message-ID (the indexed column a bounce is looked up by)."""
        return message_key(self.message_id)

    def row(self) -> dict[str, Any]:
        """The ``deliveries`` row."""
        values = {name: getattr(self, name) for name in (*_SETTLED_COLUMNS, "message_key")}
        values["lists"] = " ".join(self.lists)
        return values


@dataclass(frozen=True, slots=True)
class Count:
    """How many deliveries of one occurrence and channel have one status, and the first sent."""

    occurrence: str
    event: str
    fired_at: datetime
    channel: str
    status: str
    count: int
    first_at: datetime | None


@dataclass(frozen=True, slots=True)
class Suppression:
    """An address that is not e-mailed, why (``source``) and since when."""

    email: str
    source: str
    at: datetime
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """A consultation response as recorded."""

    id: int
    consultation: str
    email: str
    name: str | None
    organisation: str | None
    received: datetime | None
    reference: str | None
    recorded_at: datetime
    acknowledged_at: datetime | None


@dataclass(frozen=True, slots=True)
class NewResponse:
    """A response to record; ``key`` says which responses are the same one (see responses.py)."""

    key: str
    email: str
    name: str | None = None
    organisation: str | None = None
    received: datetime | None = None
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Who fired what: a command (``actor="cli"``) or a console user, and when."""

    id: int
    at: datetime
    actor: str
    action: str
    consultation: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class User:
    """A console user."""

    id: int
    email: str
    role: str
    password_hash: str | None
    failed_signins: int
    locked_until: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Pruned:
    """What ``db prune`` did: the consultations whose delivery rows went, and how many rows."""

    consultations: tuple[str, ...]
    rows: int


_MESSAGE_KEY = re.compile(r"<([0-9a-f]{32})@[^>]*>")


def message_key(message_id: str | None) -> str | None:
    """The delivery key of one of our Message-IDs (``<key@domain>``), or None for another form."""
    found = _MESSAGE_KEY.fullmatch(message_id.strip()) if message_id else None
    return found.group(1) if found else None


def _when(value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------
# URLs, engines and migrations
# ---------------------------------------------------------------------------


def database_url(settings: Settings) -> str:
    """The database URL of ``settings``: ``NOTIFIER_DATABASE_URL``, or the embedded SQLite file."""
    return settings.database_url or f"sqlite:///{(settings.data_dir / 'notifier.db').resolve()}"


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (``postgresql://`` and ``postgres://`` mean psycopg 3); SQLite gets
    WAL, a busy timeout and enforced foreign keys."""
    try:
        parsed = make_url(re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url))
        engine = create_engine(parsed, pool_pre_ping=parsed.get_backend_name() != "sqlite")
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise StoreError(f"NOTIFIER_DATABASE_URL: cannot use {url.split('@')[-1]!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=30000", "synchronous=NORMAL"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _alembic(connection: Connection) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def heads() -> set[str]:
    """The revisions this version of notifier needs."""
    return set(_scripts().get_heads())


def current(engine: Engine) -> set[str]:
    """The revisions the database is at (empty for a new database)."""
    with _connected(engine) as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def upgrade(engine: Engine) -> tuple[set[str], set[str]]:
    """Apply every migration not yet applied; returns (revisions before, revisions after).

    Concurrent upgrades are serialised: a file lock beside a SQLite file, an advisory lock on
    PostgreSQL, so two processes starting at once on a new database do not both create it.
    """
    with _upgrade_lock(engine), _connected(engine) as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(7414361)"))
        before = set(MigrationContext.configure(connection).get_current_heads())
        command.upgrade(_alembic(connection), "head")
        after = set(MigrationContext.configure(connection).get_current_heads())
        connection.commit()
    return before, after


@contextmanager
def _upgrade_lock(engine: Engine) -> Iterator[None]:
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def _connected(engine: Engine) -> Iterator[Connection]:
    try:
        connection = engine.connect()
    except OperationalError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise StoreError(f"cannot reach the database {where}: {exc.orig}") from None
    with connection:
        yield connection


def check_current(engine: Engine) -> None:
    """Raise :class:`SchemaBehindError` unless the database is at this version's revisions."""
    at, needed = current(engine), heads()
    if at != needed:
        where = engine.url.render_as_string(hide_password=True)
        unknown = at - {script.revision for script in _scripts().walk_revisions()}
        if unknown:
            raise StoreError(
                f"the database {where} is at revision {', '.join(sorted(unknown))}, which this "
                "notifier does not know: a newer version migrated it; run that version"
            )
        state = f"at revision {', '.join(sorted(at))}" if at else "empty (no schema)"
        raise SchemaBehindError(
            f"the database {where} is {state}; this notifier needs {', '.join(sorted(needed))}: "
            "run `notifier db upgrade` first"
        )


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------

_SETTLED_COLUMNS = tuple(f.name for f in fields(Settled))
_SETTLED_LISTS_AT = _SETTLED_COLUMNS.index("lists")
_TIME_COLUMNS = ("created", "updated", "sent_at")
#: How SQLAlchemy's SQLite dialect stores a DATETIME (what UTCDateTime's naive UTC becomes).
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"
_OUTCOME_COLUMNS = (
    *(c for c in _SETTLED_COLUMNS if c not in ("occurrence", "channel", "recipient", "created")),
    "message_key",
)


def _settled(row: Sequence[Any]) -> Settled:
    """The :class:`Settled` of a ``deliveries`` row read in :data:`_SETTLED_COLUMNS` order: the
    database keeps ``lists`` as one space-separated text, :class:`Settled` as a tuple of list ids."""
    values = list(row)
    values[_SETTLED_LISTS_AT] = tuple(values[_SETTLED_LISTS_AT].split())
    return Settled(*values)


class Store:
    """The consultation record in one database. Thread-safe (one engine, a connection per call)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._archive = self._upsert_deliveries()
        compiled = self._archive.compile(dialect=engine.dialect)
        self._archive_sql = str(compiled)
        self._archive_order = tuple(compiled.positiontup or ())  # qmark (SQLite): the parameters' order
        order = self._archive_order or (*_SETTLED_COLUMNS, "message_key")  # named (PostgreSQL): every column
        self._row_values = operator.attrgetter(*order)  # one C call for every column of a Settled
        self._row_names = None if self._archive_order else order  # named (PostgreSQL): a dict
        self._lists_at = order.index("lists")
        self._times_at = tuple((i, name) for i, name in enumerate(order) if name in _TIME_COLUMNS)
        self._sqlite_times: dict[datetime, str] = {}  # the times of a batch repeat (created: all of a fan-out)

    @classmethod
    def open(cls, settings: Settings) -> Store:
        """The store of ``settings``: the embedded SQLite file is created and migrated here;
        a configured database must already be current (:class:`SchemaBehindError` otherwise)."""
        engine = make_engine(database_url(settings))
        if settings.database_url:
            check_current(engine)
        else:
            upgrade(engine)
        return cls(engine)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as connection:
                yield connection
        except OperationalError as exc:
            where = self.engine.url.render_as_string(hide_password=True)
            raise StoreError(f"the database {where} failed: {exc.orig}") from None

    def _insert(self, table: Table) -> Any:
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(table)

    # -- consultations and lists ------------------------------------------------

    def record_consultation(self, record: ConsultationRecord) -> None:
        """Insert or update a consultation's title, link, zone and dates (not its pruned counts)."""
        values = {
            "id": record.id,
            "title": record.title,
            "url": record.url,
            "timezone": record.timezone,
            "opens": record.opens,
            "closes": record.closes,
            "updated_at": datetime.now(UTC),
        }
        stmt = self._insert(consultations).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["id"], set_={k: stmt.excluded[k] for k in values if k != "id"}
        )
        with self._tx() as connection:
            connection.execute(stmt)

    def consultation(self, consultation_id: str) -> ConsultationRecord | None:
        """The recorded consultation, or None."""
        with self._tx() as connection:
            row = connection.execute(select(consultations).where(consultations.c.id == consultation_id)).first()
        if row is None:
            return None
        return ConsultationRecord(
            row.id, row.title, row.url, row.timezone, row.opens, row.closes, row.told, row.pruned_at
        )

    def record_lists(self, names: Mapping[str, str | None]) -> None:
        """Insert or update the names of stakeholder lists (list id -> name)."""
        if not names:
            return
        stmt = self._insert(lists)
        stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={"name": stmt.excluded.name})
        with self._tx() as connection:
            connection.execute(stmt, [{"id": k, "name": v} for k, v in names.items()])

    def list_names(self) -> dict[str, str | None]:
        """Every recorded list id and its name."""
        with self._tx() as connection:
            return {row.id: row.name for row in connection.execute(select(lists))}

    # -- occurrences ------------------------------------------------------------

    def record_occurrence(self, occurrence: OccurrenceRecord) -> None:
        """Insert an occurrence, or update the state and lateness of one already recorded (the
        ``closes`` it told, and ``previous_closes``, are kept once known)."""
        values = {f.name: getattr(occurrence, f.name) for f in fields(occurrence)}
        stmt = self._insert(occurrences).values(values)
        o = occurrences.c
        stmt = stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={
                "state": stmt.excluded.state,
                "late": stmt.excluded.late,
                "closes": func.coalesce(o.closes, stmt.excluded.closes),
                "previous_closes": func.coalesce(o.previous_closes, stmt.excluded.previous_closes),
            },
        )
        with self._tx() as connection:
            connection.execute(stmt)

    def set_occurrence_state(self, occurrence_id: str, state: str) -> None:
        """Record an occurrence's new state (``delivering``, ``done``…)."""
        with self._tx() as connection:
            result = connection.execute(
                update(occurrences).where(occurrences.c.id == occurrence_id).values(state=state)
            )
        if result.rowcount == 0:
            raise StoreError(f"no occurrence {occurrence_id!r} in the record")

    def occurrences(self, consultation: str) -> list[OccurrenceRecord]:
        """The consultation's occurrences, in firing order."""
        query = (
            select(occurrences)
            .where(occurrences.c.consultation == consultation)
            .order_by(occurrences.c.fired_at, occurrences.c.id)
        )
        with self._tx() as connection:
            return [OccurrenceRecord(**row._asdict()) for row in connection.execute(query)]

    def fired(self, consultation: str, event: str) -> str | None:
        """The id of the latest occurrence of ``event``, or None if it never fired."""
        query = (
            select(occurrences.c.id)
            .where(occurrences.c.consultation == consultation, occurrences.c.event == event)
            .order_by(occurrences.c.number.desc())
            .limit(1)
        )
        with self._tx() as connection:
            return connection.execute(query).scalar()

    # -- deliveries -------------------------------------------------------------

    def _upsert_deliveries(self) -> Any:
        """INSERT … ON CONFLICT (occurrence, channel, recipient) DO UPDATE, unless the row there
        is newer: archiving the same outcomes twice, or out of order, leaves the latest."""
        stmt = self._insert(deliveries)
        newer = (
            (deliveries.c.updated.is_(None))
            | (stmt.excluded.updated.is_(None))
            | (stmt.excluded.updated >= deliveries.c.updated)
        )
        return stmt.on_conflict_do_update(
            index_elements=["occurrence", "channel", "recipient"],
            set_={name: stmt.excluded[name] for name in _OUTCOME_COLUMNS},
            where=newer,
        )

    def archive(self, settled: Iterable[Settled]) -> int:
        """Record final outcomes in bulk (one executemany per :data:`BATCH` rows); idempotent.

        Their occurrences must be recorded first (:meth:`record_occurrence`). Returns how many
        outcomes were given.
        """
        count = 0
        with self._tx() as connection:
            batch: list[Any] = []
            for item in settled:
                batch.append(self._driver_row(item))
                if len(batch) >= BATCH:
                    connection.exec_driver_sql(self._archive_sql, batch)
                    count, batch = count + len(batch), []
            if batch:
                connection.exec_driver_sql(self._archive_sql, batch)
                count += len(batch)
        return count

    def _driver_row(self, item: Settled) -> Any:
        """The parameters of one row for the driver's executemany, bypassing SQLAlchemy's
        per-row processing (two thirds of archiving's CPU): times as :class:`UTCDateTime`
        stores them, in the order a positional (SQLite) statement wants. The columns are read
        with one ``attrgetter`` call, not a dict built per row, and SQLite's text of a time is
        remembered (a fan-out's rows share their ``created``, and an archiver's batch many of
        its ``updated``): bench/archiver.py, bench/RESULTS.md 2026-11-30."""
        row = list(self._row_values(item))
        row[self._lists_at] = " ".join(row[self._lists_at])
        for i, name in self._times_at:
            value = row[i]
            if value is None:
                continue
            if value.tzinfo is None:
                raise StoreError(
                    f"{name} of {item.occurrence}/{item.channel}/{item.recipient} is a naive datetime: say its zone"
                )
            if self._row_names is None:
                row[i] = self._sqlite_times.get(value) or self._sqlite_time(value)
            elif value.utcoffset():  # the ledger's times are UTC already
                row[i] = value.astimezone(UTC)
        return tuple(row) if self._row_names is None else dict(zip(self._row_names, row, strict=True))

    def _sqlite_time(self, value: datetime) -> str:
        """An aware time as SQLite's naive UTC text (what :class:`UTCDateTime` stores), remembered."""
        if len(self._sqlite_times) >= 4_096:
            self._sqlite_times.clear()
        # isoformat with microseconds is _SQLITE_TIME, three times faster than strftime
        text = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        self._sqlite_times[value] = text
        return text

    def deliveries(self, consultation: str) -> Iterator[tuple[str, Settled]]:
        """(event, delivery) for each delivery row of the consultation, by occurrence, channel, recipient."""
        query = (
            select(occurrences.c.event, *(deliveries.c[name] for name in _SETTLED_COLUMNS))
            .join(occurrences, occurrences.c.id == deliveries.c.occurrence)
            .where(occurrences.c.consultation == consultation)
            .order_by(occurrences.c.fired_at, deliveries.c.occurrence, deliveries.c.channel, deliveries.c.recipient)
        )
        with self._tx() as connection:
            for row in connection.execution_options(yield_per=5_000).execute(query).tuples():
                yield row[0], _settled(row[1:])

    def delivery_by_key(self, key: str) -> tuple[str, str, str, str] | None:
        """(occurrence, channel, recipient, status) of the e-mail whose Message-ID is
        ``<key@…>`` (a delivery's key: 32 hex digits), or None when none is recorded: an
        exact match on the indexed ``message_key``."""
        if not re.fullmatch(r"[0-9a-f]{32}", key):
            return None
        d = deliveries.c
        query = select(d.occurrence, d.channel, d.recipient, d.status).where(d.message_key == key).limit(1)
        with self._tx() as connection:
            row = connection.execute(query).first()
        return None if row is None else (row.occurrence, row.channel, row.recipient, row.status)

    def reached(self, occurrence: str, statuses: Iterable[str]) -> list[tuple[str, str]]:
        """(channel, recipient) of each of an occurrence's deliveries with one of ``statuses``."""
        d = deliveries.c
        query = select(d.channel, d.recipient).where(d.occurrence == occurrence, d.status.in_(list(statuses)))
        with self._tx() as connection:
            return [(channel, recipient) for channel, recipient in connection.execute(query).tuples()]

    def mark_bounced(self, occurrence: str, channel: str, recipient: str, error: str) -> bool:
        """Record that a delivery bounced (status ``bounced``, the bounce as its last error);
        False when it was bounced already or is not recorded."""
        d = deliveries.c
        query = (
            update(deliveries)
            .where(d.occurrence == occurrence, d.channel == channel, d.recipient == recipient)
            .where(d.status != "bounced")
            .values(status="bounced", last_error=error, updated=datetime.now(UTC))
        )
        with self._tx() as connection:
            return connection.execute(query).rowcount > 0

    def settled(self, occurrence_id: str) -> list[Settled]:
        """Every recorded delivery of one occurrence (what Redis is given back when it has lost them)."""
        query = select(*(deliveries.c[name] for name in _SETTLED_COLUMNS)).where(
            deliveries.c.occurrence == occurrence_id
        )
        with self._tx() as connection:
            return [_settled(row) for row in connection.execute(query).tuples()]

    def delivery_rows(self, consultation: str) -> Iterator[tuple[Any, ...]]:
        """Each delivery of the consultation as text, in :data:`REPORT_COLUMNS` order, for bulk
        export: times as ISO 8601 UTC to the millisecond and absent values as ``""`` (the form
        ``report`` gives), formatted by the database rather than parsed and re-formatted here."""
        iso = self._iso_text
        d = deliveries.c
        columns = {
            "occurrence": d.occurrence,
            "event": occurrences.c.event,
            "channel": d.channel,
            "recipient": d.recipient,
            "name": func.coalesce(d.name, ""),
            "lists": d.lists,
            "status": d.status,
            "attempts": d.attempts,
            "last_error": func.coalesce(d.last_error, ""),
            "provider_id": func.coalesce(d.provider_id, ""),
            "url": func.coalesce(d.url, ""),
            "created": iso(d.created),
            "updated": iso(d.updated),
            "sent_at": iso(d.sent_at),
            "message_id": func.coalesce(d.message_id, ""),
        }
        # One query per occurrence, in firing order: each reads the primary key's index in
        # order (channel, recipient) instead of sorting every row of the consultation.
        query = (
            select(*(columns[name] for name in REPORT_COLUMNS))
            .join(occurrences, occurrences.c.id == d.occurrence)
            .where(d.occurrence == bindparam("occurrence"))
            .order_by(d.channel, d.recipient)
        )
        ids = [o.id for o in self.occurrences(consultation)]
        with self._tx() as connection:
            for occurrence_id in ids:
                yield from (
                    connection.execution_options(yield_per=5_000).execute(query, {"occurrence": occurrence_id}).tuples()
                )

    def _iso_text(self, column: Column[Any]) -> Any:
        """SQL for ``column`` as ``2019-07-09T08:00:00.000+00:00`` (``""`` when null)."""
        if self.dialect == "postgresql":
            text_ = func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS.MS"+00:00"')
        else:
            text_ = func.strftime("%Y-%m-%dT%H:%M:%f+00:00", column)
        return func.coalesce(text_, "")

    def delivery_page(  # noqa: PLR0913 - the occurrence, then keyword-only filters and the page's place
        self,
        occurrence: str,
        *,
        status: str | None = None,
        channel: str | None = None,
        list_id: str | None = None,
        search: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 50,
    ) -> list[Settled]:
        """One page of an occurrence's deliveries in (channel, recipient) order, filtered by
        status, channel, list and a part of the address; ``after`` is the last (channel,
        recipient) of the page before (keyset pagination: as fast on the last page as the first)."""
        d = deliveries.c
        query = select(*(d[name] for name in _SETTLED_COLUMNS)).where(
            *self._delivery_filter(occurrence, status, channel, list_id, search)
        )
        if after is not None:
            # A row-value comparison: both databases read the index from there on.
            query = query.where(tuple_(d.channel, d.recipient) > tuple_(literal(after[0]), literal(after[1])))
        query = query.order_by(d.channel, d.recipient).limit(limit)
        with self._tx() as connection:
            return [_settled(row) for row in connection.execute(query).tuples()]

    def delivery_total(
        self,
        occurrence: str,
        *,
        status: str | None = None,
        channel: str | None = None,
        list_id: str | None = None,
        search: str | None = None,
    ) -> int:
        """How many of an occurrence's deliveries :meth:`delivery_page` would page through."""
        query = select(func.count()).select_from(deliveries)
        query = query.where(*self._delivery_filter(occurrence, status, channel, list_id, search))
        with self._tx() as connection:
            return int(connection.execute(query).scalar() or 0)

    @staticmethod
    def _delivery_filter(
        occurrence: str, status: str | None, channel: str | None, list_id: str | None, search: str | None
    ) -> list[Any]:
        d = deliveries.c
        found: list[Any] = [d.occurrence == occurrence]
        if status:
            found.append(d.status == status)
        if channel:
            found.append(d.channel == channel)
        if list_id:  # lists is space-separated ids: match a whole id
            found.append((" " + d.lists + " ").like(f"% {_escape_like(list_id)} %", escape="\\"))
        if search:  # recipients are stored lower-cased
            found.append(d.recipient.like(f"%{_escape_like(search.strip().lower())}%", escape="\\"))
        return found

    def occurrence_counts(self, occurrence: str) -> dict[str, dict[str, int]]:
        """``{channel: {status: count}}`` of one occurrence: its rows, and the counts kept for
        rows pruned away (read from the index on (occurrence, status, …), not the rows)."""
        d, kept = deliveries.c, delivery_counts.c
        # Grouped in the index's order (status, channel): read in order, no sort.
        live = select(d.channel, d.status, func.count()).where(d.occurrence == occurrence).group_by(d.status, d.channel)
        pruned = select(kept.channel, kept.status, kept.count).where(kept.occurrence == occurrence)
        found: dict[str, dict[str, int]] = {}
        with self._tx() as connection:
            for query in (pruned, live):
                for channel, status, n in connection.execute(query).tuples():
                    by_status = found.setdefault(channel, {})
                    by_status[status] = by_status.get(status, 0) + int(n)
        return found

    def counts(self, consultation: str) -> list[Count]:
        """Deliveries per (occurrence, channel, status), with the earliest ``sent_at``: from the
        rows, and from the counts kept for rows pruned away."""
        with self._tx() as connection:
            return _counts(connection, consultation)

    def told(self, consultation: str) -> tuple[int, dict[str, int]]:
        """(stakeholders told in all, told per list id): distinct addresses whose e-mail was
        ``sent``; the figures kept at pruning for a pruned consultation (the larger, if
        rows have been archived since)."""
        with self._tx() as connection:
            return _told(connection, consultation)

    # -- suppressions -----------------------------------------------------------

    def suppress(
        self, email: str, source: SuppressionSource, *, detail: str | None = None, at: datetime | None = None
    ) -> None:
        """Suppress an address (compared without case); a later suppression replaces the source."""
        if source not in SOURCES:
            raise StoreError(f"suppression source must be one of {', '.join(SOURCES)}, not {source!r}")
        values = {"email": email.strip().lower(), "source": source, "detail": detail, "at": at or datetime.now(UTC)}
        stmt = self._insert(suppressions).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["email"], set_={k: stmt.excluded[k] for k in values if k != "email"}
        )
        with self._tx() as connection:
            connection.execute(stmt)

    def unsuppress(self, email: str) -> bool:
        """Lift a suppression, and forget the address's soft bounces (someone who resubscribes
        starts again); False if the address was not suppressed."""
        address = email.strip().lower()
        with self._tx() as connection:
            result = connection.execute(delete(suppressions).where(suppressions.c.email == address))
            connection.execute(delete(soft_bounces).where(soft_bounces.c.email == address))
        return result.rowcount > 0

    def soft_bounce(self, email: str, message_key: str, *, within: timedelta, at: datetime | None = None) -> int:
        """Count a soft bounce of ``email`` for the delivery ``message_key`` (each delivery
        once); how many of the address's soft bounces are within ``within`` of ``at``."""
        address, now = email.strip().lower(), at or datetime.now(UTC)
        stmt = self._insert(soft_bounces).on_conflict_do_nothing(index_elements=["email", "message_key"])
        b = soft_bounces.c
        with self._tx() as connection:
            connection.execute(stmt.values(email=address, message_key=message_key, at=now))
            connection.execute(delete(soft_bounces).where(b.email == address, b.at < now - within))
            found = connection.execute(select(func.count()).where(b.email == address)).scalar()
        return int(found or 0)

    def sync_config_suppressions(self, emails: Iterable[str]) -> None:
        """Make the ``config`` suppressions exactly ``emails`` (the members with ``subscribed: false``),
        leaving suppressions from other sources alone."""
        wanted = {e.strip().lower() for e in emails}
        with self._tx() as connection:
            have = set(
                connection.execute(select(suppressions.c.email).where(suppressions.c.source == "config")).scalars()
            )
            gone = have - wanted
            if gone:
                connection.execute(delete(suppressions).where(suppressions.c.email.in_(gone)))
            stmt = self._insert(suppressions).on_conflict_do_nothing(index_elements=["email"])
            now = datetime.now(UTC)
            new = [{"email": e, "source": "config", "detail": None, "at": now} for e in sorted(wanted - have)]
            if new:
                connection.execute(stmt, new)

    def suppressions(self) -> list[Suppression]:
        """Every suppressed address, by address."""
        with self._tx() as connection:
            rows = connection.execute(select(suppressions).order_by(suppressions.c.email))
            return [Suppression(r.email, r.source, r.at, r.detail) for r in rows]

    def suppression(self, email: str) -> Suppression | None:
        """Why an address is suppressed, or None."""
        with self._tx() as connection:
            r = connection.execute(select(suppressions).where(suppressions.c.email == email.strip().lower())).first()
        return None if r is None else Suppression(r.email, r.source, r.at, r.detail)

    # -- responses --------------------------------------------------------------

    def add_responses(self, consultation: str, items: Sequence[NewResponse]) -> list[Response]:
        """Record responses in one transaction; returns only the new ones (a ``key`` already
        recorded for the consultation adds nothing), in the order given."""
        stmt = (
            self._insert(responses)
            .on_conflict_do_nothing(index_elements=["consultation", "key"])
            .returning(*responses.c)
        )
        now = datetime.now(UTC)
        added: list[Response] = []
        with self._tx() as connection:
            for item in items:
                values = {f.name: getattr(item, f.name) for f in fields(item)}
                row = connection.execute(stmt.values(consultation=consultation, recorded_at=now, **values)).first()
                if row is not None:
                    added.append(Response(**{k: v for k, v in row._asdict().items() if k != "key"}))
        return added

    def responses(self, consultation: str) -> list[Response]:
        """The consultation's responses, in the order received (those without a date last)."""
        query = (
            select(*(c for c in responses.c if c.name != "key"))
            .where(responses.c.consultation == consultation)
            .order_by(responses.c.received.is_(None), responses.c.received, responses.c.id)
        )
        with self._tx() as connection:
            return [Response(**row._asdict()) for row in connection.execute(query)]

    def mark_acknowledged(self, response_ids: Iterable[int], at: datetime | None = None) -> None:
        """Record that these responses were acknowledged (the ``response_received`` e-mail went)."""
        ids = list(response_ids)
        if ids:
            with self._tx() as connection:
                connection.execute(
                    update(responses).where(responses.c.id.in_(ids)).values(acknowledged_at=at or datetime.now(UTC))
                )

    # -- audit log --------------------------------------------------------------

    def audit(self, actor: str, action: str, *, consultation: str | None = None, detail: str | None = None) -> None:
        """Record who (``cli`` or a console user's e-mail) did what (``send opened``, say), now."""
        with self._tx() as connection:
            connection.execute(
                audit_log.insert().values(
                    at=datetime.now(UTC), actor=actor, action=action, consultation=consultation, detail=detail
                )
            )

    def audit_entries(self, consultation: str | None = None, *, limit: int = 1_000) -> list[AuditEntry]:
        """The latest entries first (only the consultation's, when given)."""
        query = select(audit_log).order_by(audit_log.c.at.desc(), audit_log.c.id.desc()).limit(limit)
        if consultation is not None:
            query = query.where(audit_log.c.consultation == consultation)
        with self._tx() as connection:
            return [AuditEntry(**row._asdict()) for row in connection.execute(query)]

    # -- console users ----------------------------------------------------------

    def add_user(self, email: str, role: str, password_hash: str | None = None) -> User:
        """Add a console user; :class:`StoreError` if the role is unknown or the address is taken."""
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        address = email.strip().lower()
        stmt = (
            self._insert(users)
            .on_conflict_do_nothing(index_elements=["email"])
            .values(
                email=address, role=role, password_hash=password_hash, failed_signins=0, created_at=datetime.now(UTC)
            )
            .returning(*users.c)
        )
        with self._tx() as connection:
            row = connection.execute(stmt).first()
        if row is None:
            raise StoreError(f"a user {address} already exists")
        return User(**row._asdict())

    def user(self, email: str) -> User | None:
        """The user with this address (compared without case), or None."""
        with self._tx() as connection:
            row = connection.execute(select(users).where(users.c.email == email.strip().lower())).first()
        return None if row is None else User(**row._asdict())

    def users(self) -> list[User]:
        """Every console user, by address."""
        with self._tx() as connection:
            return [User(**row._asdict()) for row in connection.execute(select(users).order_by(users.c.email))]

    def remove_user(self, email: str) -> bool:
        """Remove a user; False if there was none."""
        with self._tx() as connection:
            result = connection.execute(delete(users).where(users.c.email == email.strip().lower()))
        return result.rowcount > 0

    def set_password_hash(self, email: str, password_hash: str) -> None:
        """Replace a user's (argon2) password hash."""
        self._update_user(email, password_hash=password_hash)

    def set_signin_state(self, email: str, *, failed_signins: int, locked_until: datetime | None) -> None:
        """Record failed sign-ins and the lock they earned (0 and None after a good sign-in)."""
        self._update_user(email, failed_signins=failed_signins, locked_until=locked_until)

    def _update_user(self, email: str, **values: Any) -> None:
        with self._tx() as connection:
            result = connection.execute(update(users).where(users.c.email == email.strip().lower()).values(**values))
        if result.rowcount == 0:
            raise StoreError(f"no user {email.strip().lower()}")

    # -- retention --------------------------------------------------------------

    def prune(self, retention_days: float, *, now: datetime | None = None) -> Pruned:
        """Delete the delivery rows of consultations closed more than ``retention_days`` ago,
        keeping their counts (``delivery_counts``) and who was told (``list_counts``, ``told``)."""
        cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
        with self._tx() as connection:
            due = list(
                connection.execute(
                    select(consultations.c.id).where(consultations.c.closes < cutoff).order_by(consultations.c.id)
                ).scalars()
            )
        pruned: list[str] = []
        rows = 0
        for consultation in due:
            with self._tx() as connection:
                gone = self._prune_one(connection, consultation)
            if gone:
                pruned.append(consultation)
                rows += gone
        return Pruned(tuple(pruned), rows)

    def _prune_one(self, connection: Connection, consultation: str) -> int:
        """Replace one consultation's delivery rows by their counts, in the caller's transaction
        (rows archived for it by another process during that transaction may go uncounted:
        pruning is for consultations long closed)."""
        told, per_list = _told(connection, consultation)
        counts = _counts(connection, consultation)
        occurrence_ids = select(occurrences.c.id).where(occurrences.c.consultation == consultation)
        connection.execute(delete(delivery_counts).where(delivery_counts.c.occurrence.in_(occurrence_ids)))
        if counts:
            connection.execute(
                delivery_counts.insert(),
                [
                    {
                        "occurrence": c.occurrence,
                        "channel": c.channel,
                        "status": c.status,
                        "count": c.count,
                        "first_at": c.first_at,
                    }
                    for c in counts
                ],
            )
        connection.execute(delete(list_counts).where(list_counts.c.consultation == consultation))
        if per_list:
            connection.execute(
                list_counts.insert(),
                [{"consultation": consultation, "list_id": k, "told": n} for k, n in per_list.items()],
            )
        gone = connection.execute(delete(deliveries).where(deliveries.c.occurrence.in_(occurrence_ids))).rowcount
        connection.execute(
            update(consultations)
            .where(consultations.c.id == consultation)
            .values(told=told, pruned_at=datetime.now(UTC))
        )
        return int(gone)


def _escape_like(value: str) -> str:
    """``value`` matched literally by LIKE (its ``%`` and ``_`` are not wildcards)."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def record_config(store: Store, config: Config) -> None:
    """Record every consultation (title, link, zone, dates) and list name of ``config``, so that
    the record explains itself (``notifier evidence`` reads nothing else)."""
    for c in config.consultations.values():
        store.record_consultation(ConsultationRecord(c.id, c.title, c.url, config.timezone, c.opens, c.closes))
    store.record_lists({list_id: lst.name for list_id, lst in config.lists.items()})


def _counts(connection: Connection, consultation: str) -> list[Count]:
    kept = (
        select(
            occurrences.c.id,
            occurrences.c.event,
            occurrences.c.fired_at,
            delivery_counts.c.channel,
            delivery_counts.c.status,
            delivery_counts.c.count,
            delivery_counts.c.first_at,
        )
        .join(occurrences, occurrences.c.id == delivery_counts.c.occurrence)
        .where(occurrences.c.consultation == consultation)
    )
    live = (
        select(
            occurrences.c.id,
            occurrences.c.event,
            occurrences.c.fired_at,
            deliveries.c.channel,
            deliveries.c.status,
            func.count().label("count"),
            func.min(deliveries.c.sent_at),
        )
        .join(occurrences, occurrences.c.id == deliveries.c.occurrence)
        .where(occurrences.c.consultation == consultation)
        .group_by(
            occurrences.c.id, occurrences.c.event, occurrences.c.fired_at, deliveries.c.channel, deliveries.c.status
        )
    )
    merged: dict[tuple[str, str, str], Count] = {}
    for query in (kept, live):
        for occ, event_name, fired_at, channel, status, n, first in connection.execute(query):
            old = merged.get((occ, channel, status))
            if old is not None:
                n, first = n + old.count, min((t for t in (first, old.first_at) if t), default=None)
            merged[(occ, channel, status)] = Count(occ, event_name, fired_at, channel, status, n, first)
    return sorted(merged.values(), key=lambda c: (c.fired_at, c.occurrence, c.channel, c.status))


def told_in(rows: Iterable[tuple[str, str]]) -> tuple[int, dict[str, int]]:
    """(addresses told in all, per list id) from (recipient, space-separated list ids) of
    e-mails with a :data:`TOLD` status."""
    people: set[str] = set()
    per_list: dict[str, set[str]] = {}
    for recipient, list_ids in rows:
        address = recipient.lower()
        people.add(address)
        for list_id in list_ids.split():
            per_list.setdefault(list_id, set()).add(address)
    return len(people), {k: len(v) for k, v in per_list.items()}


def _told(connection: Connection, consultation: str) -> tuple[int, dict[str, int]]:
    query = (
        select(deliveries.c.recipient, deliveries.c.lists)
        .join(occurrences, occurrences.c.id == deliveries.c.occurrence)
        .where(
            occurrences.c.consultation == consultation, deliveries.c.channel == "email", deliveries.c.status.in_(TOLD)
        )
    )
    total, counts = told_in(connection.execute(query).tuples().all())
    kept_total = connection.execute(select(consultations.c.told).where(consultations.c.id == consultation)).scalar()
    kept = {
        list_id: n
        for list_id, n in connection.execute(
            select(list_counts.c.list_id, list_counts.c.told).where(list_counts.c.consultation == consultation)
        )
    }
    for list_id, n in kept.items():
        counts[list_id] = max(n, counts.get(list_id, 0))
    return max(total, kept_total or 0), counts
