"""The consultation record (notifier.store) on real SQLite and real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import StatementError

from notifier.config import Settings
from notifier.errors import SchemaBehindError, StoreError
from notifier.ledger import Record
from notifier.store import (
    ConsultationRecord,
    OccurrenceRecord,
    Settled,
    Store,
    current,
    heads,
    make_engine,
    metadata,
    upgrade,
)
from tests.conftest import Project
from tests.record_fixtures import CLOSES, OPENS, SOC, occurrence, seed


def _settled(occ: str, n: int, *, status: str = "sent", updated: datetime = OPENS) -> list[Settled]:
    return [
        Settled(
            occ,
            "email",
            f"person{i}@example.org",
            status,
            OPENS,
            lists=("csp",),
            attempts=1,
            updated=updated,
            sent_at=updated if status == "sent" else None,
        )
        for i in range(n)
    ]


def test_migrations_build_exactly_the_schema_the_code_uses(blank_database: str) -> None:
    engine = make_engine(blank_database)
    before, after = upgrade(engine)
    assert before == set() and after == heads() == current(engine)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
    engine.dispose()


def test_the_embedded_sqlite_file_is_created_and_migrated_on_first_use(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    store = Store.open(settings)
    store.suppress("A@Example.org", "manual")
    store.close()
    assert (tmp_path / "var" / "notifier.db").exists()
    again = Store.open(settings)
    assert [s.email for s in again.suppressions()] == ["a@example.org"]
    again.close()


def test_a_configured_database_is_refused_while_its_schema_is_behind(blank_database: str) -> None:
    settings = Settings(database_url=blank_database)
    with pytest.raises(SchemaBehindError, match="run `notifier db upgrade` first"):
        Store.open(settings)
    engine = make_engine(blank_database)
    upgrade(engine)
    engine.dispose()
    Store.open(settings).close()


def test_commands_refuse_while_the_schema_is_behind_until_db_upgrade(project: Project, blank_database: str) -> None:
    project.env["NOTIFIER_DATABASE_URL"] = blank_database
    refused = project.run("plan")
    assert refused.returncode == 1
    assert "notifier db upgrade" in refused.stderr and "Traceback" not in refused.stderr
    upgraded = project.run("db", "upgrade", check=True)
    head = ", ".join(sorted(heads()))
    assert f"upgraded from empty to {head}" in upgraded.stdout
    assert project.run("db", "upgrade", check=True).stdout.strip().endswith(f"is up to date (revision {head})")
    project.run("responses", "list", SOC, check=True)


def test_an_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="cannot reach the database"):
        Store.open(Settings(database_url="postgresql://postgres@127.0.0.1:1/nowhere"))


def test_a_url_of_an_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="NOTIFIER_DATABASE_URL: cannot use"):
        make_engine("oracle-ish://someone@somewhere/db")


def test_archiving_the_same_outcomes_twice_leaves_one_row_each(store: Store) -> None:
    store.record_consultation(ConsultationRecord(SOC, "SOC", None, "Europe/London", OPENS, CLOSES))
    occ = occurrence(store, "opened", OPENS)
    outcomes = _settled(occ, 4_500)  # more than one batch
    assert store.archive(outcomes) == 4_500
    assert store.archive(outcomes) == 4_500
    counts = store.counts(SOC)
    assert [(c.channel, c.status, c.count) for c in counts] == [("email", "sent", 4_500)]
    assert sum(1 for _ in store.deliveries(SOC)) == 4_500


def test_an_older_outcome_archived_late_does_not_replace_a_newer_one(store: Store) -> None:
    occ = occurrence(store, "opened", OPENS)
    later = OPENS + timedelta(hours=1)
    store.archive(_settled(occ, 1, status="bounced", updated=later))
    store.archive(_settled(occ, 1, status="sent", updated=OPENS))
    [(_, delivery)] = list(store.deliveries(SOC))
    assert delivery.status == "bounced" and delivery.updated == later


def test_times_are_read_back_as_the_same_instant_in_utc(store: Store) -> None:
    bst = timezone(timedelta(hours=1))
    fired = datetime(2019, 7, 9, 9, 0, 0, 123000, tzinfo=bst)
    occ = occurrence(store, "opened", fired)
    [record] = store.occurrences(SOC)
    assert record.fired_at == fired and record.fired_at.tzinfo == UTC and record.fired_at.hour == 8
    store.archive([Settled(occ, "email", "a@example.org", "sent", fired, sent_at=fired)])
    [(_, delivery)] = list(store.deliveries(SOC))
    assert delivery.sent_at == fired and delivery.sent_at is not None and delivery.sent_at.tzinfo == UTC


def test_a_time_without_a_zone_is_refused(store: Store) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        occurrence(store, "opened", datetime(2019, 7, 9, 9, 0))
    occ = occurrence(store, "opened", OPENS)
    with pytest.raises(StoreError, match=r"sent_at of .*/email/a@example\.org is a naive datetime"):
        store.archive([Settled(occ, "email", "a@example.org", "sent", OPENS, sent_at=datetime(2019, 7, 9, 9, 0))])
    assert list(store.deliveries(SOC)) == []


def test_fired_finds_the_latest_occurrence_of_an_event(store: Store) -> None:
    assert store.fired(SOC, "opened") is None
    occurrence(store, "opened", OPENS)
    occurrence(store, "opened", OPENS + timedelta(days=1), number=2)
    occurrence(store, "closed", CLOSES)
    assert store.fired(SOC, "opened") == f"{SOC}:opened:2"
    store.set_occurrence_state(f"{SOC}:opened:2", "delivering")
    assert [o.state for o in store.occurrences(SOC)] == ["done", "delivering", "done"]
    store.record_occurrence(OccurrenceRecord(f"{SOC}:opened:2", SOC, "opened", 2, OPENS, OPENS, state="done"))
    assert store.occurrences(SOC)[1].state == "done"
    with pytest.raises(StoreError, match="no occurrence"):
        store.set_occurrence_state("nothing:here:1", "done")


def test_suppressions_keep_their_source_and_time_and_can_be_lifted(store: Store) -> None:
    at = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    store.suppress("Jane@CSP.example", "unsubscribe", at=at)
    store.suppress("gone@nhs.example", "bounce", detail="550 5.1.1 no such user")
    store.sync_config_suppressions(["off@list.example", "JANE@csp.example"])
    assert {s.email: s.source for s in store.suppressions()} == {
        "jane@csp.example": "unsubscribe",
        "gone@nhs.example": "bounce",
        "off@list.example": "config",
    }
    jane = store.suppression("jane@csp.example")
    assert jane is not None and jane.at == at
    store.sync_config_suppressions([])  # the member is subscribed again in config
    assert store.suppression("off@list.example") is None
    assert store.unsuppress("GONE@nhs.example") is True
    assert store.unsuppress("gone@nhs.example") is False
    with pytest.raises(StoreError, match="source must be one of"):
        store.suppress("x@example.org", "whim")  # type: ignore[arg-type]


def test_console_users_have_one_role_and_one_account_per_address(store: Store) -> None:
    user = store.add_user("Policy@PCC.example", "sender", "$argon2id$v=19$...")
    assert (user.email, user.role, user.failed_signins, user.locked_until) == ("policy@pcc.example", "sender", 0, None)
    with pytest.raises(StoreError, match="already exists"):
        store.add_user("policy@pcc.example", "admin")
    with pytest.raises(StoreError, match="role must be one of"):
        store.add_user("other@pcc.example", "owner")
    until = datetime(2026, 1, 1, 12, tzinfo=UTC)
    store.set_signin_state("policy@pcc.example", failed_signins=5, locked_until=until)
    locked = store.user("POLICY@pcc.example")
    assert locked is not None and (locked.failed_signins, locked.locked_until) == (5, until)
    assert [u.email for u in store.users()] == ["policy@pcc.example"]
    assert store.remove_user("policy@pcc.example") and store.user("policy@pcc.example") is None


def test_the_audit_log_says_who_did_what_and_when(store: Store) -> None:
    store.audit("cli", "send opened", consultation=SOC, detail="occurrence 1")
    store.audit("policy@pcc.example", "suppress", detail="jane@csp.example")
    entries = store.audit_entries()
    assert [(e.actor, e.action) for e in entries] == [("policy@pcc.example", "suppress"), ("cli", "send opened")]
    assert [e.action for e in store.audit_entries(SOC)] == ["send opened"]
    assert all(e.at.tzinfo == UTC for e in entries)


def test_prune_deletes_rows_of_long_closed_consultations_but_keeps_their_counts(store: Store) -> None:
    seed(store)
    seed(store, consultation="recent", closes=datetime(2026, 11, 1, tzinfo=UTC))
    counts_before, told_before = store.counts(SOC), store.told(SOC)
    now = datetime(2026, 11, 29, tzinfo=UTC)
    pruned = store.prune(365, now=now)
    assert pruned.consultations == (SOC,) and pruned.rows == 10
    assert list(store.deliveries(SOC)) == []
    assert store.counts(SOC) == counts_before
    assert store.told(SOC) == told_before == (2, {"csp": 2, "nhs": 1})
    assert sum(1 for _ in store.deliveries("recent")) == 10
    assert store.prune(365, now=now).rows == 0
    assert store.counts(SOC) == counts_before


def test_several_openers_of_a_new_embedded_database_at_once_all_succeed(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            Store.open(settings).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert current(make_engine(f"sqlite:///{tmp_path / 'var' / 'notifier.db'}")) == heads()


def test_a_ledger_record_is_archived_with_its_times_lists_and_message_id(store: Store) -> None:
    occ = occurrence(store, "opened", OPENS)
    record = Record(
        "email",
        "jane@csp.example",
        "sent",
        name="Jane",
        lists=("csp", "nhs"),
        attempts=2,
        error="451 try later",
        provider_id="250 ok",
        created="2019-07-09T08:00:00.000+00:00",
        updated="2019-07-09T08:00:05.120+00:00",
        sent_at="2019-07-09T08:00:05.120+00:00",
    )
    store.archive([Settled.from_record(occ, record, message_id="<abc@pcc.example>")])
    [(event, delivery)] = list(store.deliveries(SOC))
    assert event == "opened"
    assert (delivery.lists, delivery.attempts, delivery.last_error, delivery.message_id) == (
        ("csp", "nhs"),
        2,
        "451 try later",
        "<abc@pcc.example>",
    )
    assert delivery.sent_at == datetime(2019, 7, 9, 8, 0, 5, 120000, tzinfo=UTC)


def test_a_database_migrated_by_a_newer_version_is_refused_saying_so(database: str) -> None:
    engine = make_engine(database)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    try:
        with pytest.raises(StoreError, match="at revision 9999, which this notifier does not know"):
            Store.open(Settings(database_url=database))
    finally:  # the PostgreSQL database is the run's, shared by later tests
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": min(heads())})
        engine.dispose()


def test_db_prune_keeps_everything_unless_retention_days_is_set(project: Project, database: str) -> None:
    project.env["NOTIFIER_DATABASE_URL"] = database
    store = Store(make_engine(database))
    seed(store)
    kept = project.run("db", "prune", check=True)
    assert "NOTIFIER_RETENTION_DAYS is not set" in kept.stdout
    assert sum(1 for _ in store.deliveries(SOC)) == 10
    project.env["NOTIFIER_RETENTION_DAYS"] = "365"
    pruned = project.run("db", "prune", check=True)
    assert f"pruned 10 delivery row(s) of consultations closed more than 365 days ago: {SOC}" in pruned.stdout
    assert list(store.deliveries(SOC)) == [] and sum(c.count for c in store.counts(SOC)) == 10
    assert [e.action for e in store.audit_entries()] == ["db prune"]
    store.close()


def test_a_retention_that_is_not_a_number_is_refused(project: Project) -> None:
    project.env["NOTIFIER_RETENTION_DAYS"] = "a year"
    result = project.run("db", "prune")
    assert result.returncode == 1 and "NOTIFIER_RETENTION_DAYS: must be a number, not 'a year'" in result.stderr
    project.env["NOTIFIER_RETENTION_DAYS"] = "-30"
    negative = project.run("db", "prune")
    assert negative.returncode == 1 and "NOTIFIER_RETENTION_DAYS must be 0 or more, not -30" in negative.stderr
