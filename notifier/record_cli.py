"""The commands of the consultation record: ``db upgrade``, ``db prune``, ``responses import``,
``responses list`` and ``evidence``. :mod:`notifier.cli` registers them; errors raised here
reach its ``main`` and become the contract's exit codes (1 for bad input, with ``FILE:LINE``).

SQLAlchemy and Alembic are imported by the commands that use them, not at import time:
every ``notifier`` command imports this module, and they would add a third to its start-up.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from notifier import acknowledgement
from notifier.config import Settings, load_config
from notifier.errors import UsageError
from notifier.ledger import SUCCEEDED
from notifier.service import Service

if TYPE_CHECKING:
    from notifier.service import Progress
    from notifier.store import Response

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
#: Commands that work while the schema is behind (they are how it catches up).
SCHEMA_FREE = frozenset({"db"})


def check_schema(settings: Settings, command: str | None) -> None:
    """Refuse (:class:`~notifier.errors.SchemaBehindError`) any command but ``db`` while a
    configured database (``NOTIFIER_DATABASE_URL``) is behind this version's migrations."""
    if settings.database_url and command not in SCHEMA_FREE:
        from notifier.store import check_current, database_url, make_engine

        engine = make_engine(database_url(settings))
        try:
            check_current(engine)
        finally:
            engine.dispose()


@click.group()
def db() -> None:
    """The consultation record's database (NOTIFIER_DATABASE_URL; SQLite in the data dir by default)."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations this version of notifier needs."""
    from notifier.store import database_url, make_engine, upgrade

    settings = Settings.from_env()
    engine = make_engine(database_url(settings))
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    where = engine.url.render_as_string(hide_password=True)
    if before == after:
        out.print(f"{where} is up to date (revision {', '.join(sorted(after))})")
    else:
        out.print(f"{where} upgraded from {', '.join(sorted(before)) or 'empty'} to {', '.join(sorted(after))}")


@db.command("prune")
def db_prune() -> None:
    """Delete the delivery rows of consultations closed more than NOTIFIER_RETENTION_DAYS ago (counts are kept)."""
    settings = Settings.from_env()
    if settings.retention_days is None:
        out.print("NOTIFIER_RETENTION_DAYS is not set: delivery records are kept for ever; nothing pruned")
        return
    if settings.retention_days < 0:
        raise UsageError(f"NOTIFIER_RETENTION_DAYS must be 0 or more, not {settings.retention_days:g}")
    from notifier.store import Store

    store = Store.open(settings)
    try:
        pruned = store.prune(settings.retention_days)
        if pruned.consultations:
            store.audit("cli", "db prune", detail=f"{pruned.rows} rows of {', '.join(pruned.consultations)}")
    finally:
        store.close()
    which = ", ".join(pruned.consultations) or "none"
    out.print(
        f"pruned {pruned.rows:,} delivery row(s) of consultations closed more than "
        f"{settings.retention_days:g} days ago: {which} (their counts are kept)"
    )


@click.group()
def responses() -> None:
    """Consultation responses: import them from a CSV export, list them."""


@responses.command("import")
@click.argument("consultation")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--no-acknowledge", is_flag=True, help="Record the responses without acknowledging them.")
def responses_import(consultation: str, file: Path, no_acknowledge: bool) -> None:
    """Record the responses in FILE (a CSV with an `email` column); re-importing adds nothing."""
    from notifier import responses as responses_file
    from notifier.store import Store, record_config

    settings = Settings.from_env()
    config = load_config(settings.config_dir)
    config.consultation(consultation)  # an unknown consultation is a UsageError naming the known ones
    if not no_acknowledge:
        acknowledgement.ready(config, consultation)  # a missing or broken thank-you: nothing recorded
    store = Store.open(settings)
    try:
        record_config(store, config)
        new = responses_file.import_file(store, consultation, file, config.tz)
        store.audit(
            "cli",
            "responses import",
            consultation=consultation,
            detail=f"{file}: {len(new)} new"
            + (", not acknowledged (--no-acknowledge)" if no_acknowledge and new else ""),
        )
    finally:
        store.close()
    out.print(f"{len(new)} new response(s) recorded for {consultation} from {file}")
    if new and not no_acknowledge:
        _acknowledge(settings, consultation, new)


def _acknowledge(settings: Settings, consultation: str, new: list[Response]) -> None:
    """Thank each new respondent once (event ``response_received``), as ``send --wait`` delivers:
    by the workers, or in this process if none is alive; exit 2 if a thank-you failed."""
    service = Service(settings)
    progress: list[Progress] = []
    try:
        started = service.acknowledge(consultation, new)
        if started and service.workers_alive():
            progress = [service.wait(o) for o in started]
        elif started:
            out.print("no worker is running: acknowledging in this process")
            with service.worker():
                progress = [service.wait(o) for o in started]
        for occurrence in started:  # as the deliver actor does: again here, whichever worker sent it
            acknowledgement.settle(service.ledger, service.store, occurrence)
        records = [r for o in started for r in service.ledger.records(o)]
    finally:
        service.close()
    done = sum(r.status in SUCCEEDED for r in records)
    out.print(f"{done} acknowledgement(s) sent" + (f" of {len(new)}" if done != len(new) else ""))
    for r in records:
        if r.status not in SUCCEEDED:
            err.print(
                f"not acknowledged: {r.recipient}: {r.status}" + (f" ({r.error})" if r.error else ""), markup=False
            )
    if started and any(p.failed for p in progress):
        sys.exit(2)


@responses.command("list")
@click.argument("consultation")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def responses_list(consultation: str, fmt: str) -> None:
    """The recorded responses of CONSULTATION."""
    from notifier.store import Store

    store = Store.open(Settings.from_env())
    try:
        rows = [_response_row(r) for r in store.responses(consultation)]
    finally:
        store.close()
    if fmt == "json":
        click.echo(json.dumps({"consultation": consultation, "responses": rows}, indent=2, ensure_ascii=False))
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=_RESPONSE_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        click.echo(buffer.getvalue(), nl=False)
    else:
        table = Table(title=f"{consultation}: {len(rows)} response(s)", title_justify="left")
        for column in _RESPONSE_FIELDS:
            table.add_column(column.capitalize(), overflow="fold")
        for row in rows:
            table.add_row(*(str(row[c] or "") for c in _RESPONSE_FIELDS))
        out.print(table)


_RESPONSE_FIELDS = ("email", "name", "organisation", "received", "reference", "acknowledged")


def _response_row(r: Response) -> dict[str, str | None]:
    return {
        "email": r.email,
        "name": r.name,
        "organisation": r.organisation,
        "received": r.received.isoformat() if r.received else None,
        "reference": r.reference,
        "acknowledged": r.acknowledged_at.isoformat() if r.acknowledged_at else None,
    }


@click.command()
@click.argument("consultation")
@click.option(
    "--out",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where to write the pack (default ./evidence/CONSULTATION/).",
)
def evidence(consultation: str, folder: Path | None) -> None:
    """Write the evidence pack of CONSULTATION from the database alone, and print its overview."""
    from notifier import evidence as evidence_pack
    from notifier.store import Store

    store = Store.open(Settings.from_env())
    try:
        facts = evidence_pack.build(store, consultation)
    finally:
        store.close()
    folder = folder or Path("evidence") / consultation
    paths = evidence_pack.write(facts, folder, generated=datetime.now(UTC))
    click.echo(evidence_pack.overview(facts))
    err.print(f"written: {', '.join(str(p) for p in paths)}")
