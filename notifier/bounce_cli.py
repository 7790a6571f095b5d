"""``notifier bounces import MAILDIR``: record the bounces (DSNs) in a Maildir.

:mod:`notifier.cli` registers the group; errors raised here reach its ``main`` and become
the contract's exit codes (a path that is not a Maildir is exit 1, naming it).
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from notifier.bounces import BounceBook, import_maildir
from notifier.config import Settings
from notifier.service import Service

out = Console(highlight=False, soft_wrap=True)


@click.group()
def bounces() -> None:
    """Bounced e-mails: mark their deliveries bounced and suppress the addresses."""


@bounces.command("import")
@click.argument("maildir", type=click.Path(path_type=Path))
def bounces_import(maildir: Path) -> None:
    """Read the bounce messages (DSNs) in MAILDIR and record them; reading it again adds nothing."""
    settings = Settings.from_env()
    service = Service(settings)
    try:
        service.config()  # a broken config is reported as such, before anything is read
        archiver = service.runtime.archiver()
        if archiver is not None:
            archiver.drain()  # deliveries settled a moment ago are in the record, where bounces look them up
        book = BounceBook(service.ledger, service.store, settings.secret_key())
        tally = import_maildir(maildir, book)
        service.store.audit("cli", "bounces import", detail=f"{maildir}: {tally}")
    finally:
        service.close()
    out.print(str(tally))
