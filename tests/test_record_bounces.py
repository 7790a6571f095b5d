"""What bounces and extensions keep in the consultation record (notifier.store), on real SQLite
and real PostgreSQL: the delivery a bounce names is found by an index, not a scan."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event, text

from notifier.store import MIGRATIONS, OccurrenceRecord, Settled, Store, make_engine, upgrade
from tests.record_fixtures import OPENS, occurrence

KEY = "0123456789abcdef0123456789abcdef"


@contextmanager
def statements(store: Store) -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements (and parameters) the store runs meanwhile."""
    seen: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", keep)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", keep)


def plan(store: Store, statement: str, parameters: Any) -> str:
    """The database's plan for ``statement``, as text (sequential scans discouraged on
    PostgreSQL, whose planner scans a small table whatever the indexes)."""
    with store.engine.connect() as connection:
        if store.dialect == "postgresql":
            connection.exec_driver_sql("SET enable_seqscan = off")
            rows = connection.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
        else:
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
    return "\n".join(" ".join(str(v) for v in row) for row in rows)


def test_a_bounce_finds_its_delivery_by_the_message_id_index_not_a_scan(store: Store) -> None:
    occ = occurrence(store, "opened", OPENS)
    store.archive(
        Settled(occ, "email", f"p{i}@example.org", "sent", OPENS, message_id=f"<{i:032x}@pcc.example>")
        for i in range(200)
    )
    store.archive([Settled(occ, "email", "jane@example.org", "sent", OPENS, message_id=f"<{KEY}@pcc.example>")])

    with statements(store) as seen:
        assert store.delivery_by_key(KEY) == (occ, "email", "jane@example.org", "sent")
    assert store.delivery_by_key("f" * 32) is None
    (statement, parameters) = next((s, p) for s, p in seen if "deliveries" in s)
    assert "LIKE" not in statement.upper()
    assert "ix_deliveries_message_key" in plan(store, statement, parameters)


def test_rows_archived_before_the_index_are_found_by_it_after_the_upgrade(blank_database: str) -> None:
    engine = make_engine(blank_database)
    with engine.connect() as connection:
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
        connection.commit()
    with engine.begin() as connection:  # archived by the notifier before 0003
        connection.execute(
            text(
                "INSERT INTO occurrences (id, consultation, event, number, at, fired_at, late, state, rehearsal) "
                "VALUES ('soc:opened:1', 'soc', 'opened', 1, :at, :at, false, 'done', false)"
            ),
            {"at": OPENS},
        )
        connection.execute(
            text(
                "INSERT INTO deliveries (occurrence, channel, recipient, lists, status, attempts, message_id, created) "
                "VALUES ('soc:opened:1', 'email', 'jane@example.org', '', 'sent', 1, :mid, :at)"
            ),
            {"mid": f"<{KEY}@pcc.example>", "at": OPENS},
        )
    upgrade(engine)
    assert Store(engine).delivery_by_key(KEY) == ("soc:opened:1", "email", "jane@example.org", "sent")
    engine.dispose()


def test_soft_bounces_count_each_delivery_once_within_the_window_and_a_resubscribe_forgets_them(
    store: Store,
) -> None:
    window = timedelta(days=30)
    assert store.soft_bounce("Jane@Example.org", "a" * 32, within=window, at=OPENS - timedelta(days=40)) == 1
    assert store.soft_bounce("jane@example.org", "b" * 32, within=window, at=OPENS) == 1, "the old one expired"
    assert store.soft_bounce("jane@example.org", "b" * 32, within=window, at=OPENS) == 1, "one delivery, once"
    assert store.soft_bounce("jane@example.org", "c" * 32, within=window, at=OPENS) == 2
    store.unsuppress("JANE@example.org")
    assert store.soft_bounce("jane@example.org", "d" * 32, within=window, at=OPENS) == 1


def test_the_closes_an_occurrence_told_is_kept_once_known(store: Store) -> None:
    told = OPENS + timedelta(days=37)
    store.record_occurrence(OccurrenceRecord("soc:opened:1", "soc", "opened", 1, OPENS, OPENS, closes=told))
    store.record_occurrence(OccurrenceRecord("soc:opened:1", "soc", "opened", 1, OPENS, OPENS, state="done"))
    [found] = store.occurrences("soc")
    assert found.closes == told and found.state == "done"
