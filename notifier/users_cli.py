"""The ``users`` commands: add, list and remove the console's users (:mod:`notifier.users`).

:mod:`notifier.cli` registers the group; errors raised here reach its ``main`` and become the
contract's exit codes (1 for bad input, with a message naming what was wrong). A password is
read from a hidden prompt (asked twice) or, for scripts, from the first line of standard input
(``--password-stdin``), never from an argument, where ``ps`` and shell history would show it.
"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.table import Table

from notifier import users as console_users
from notifier.config import Settings
from notifier.errors import UsageError
from notifier.store import Store

out = Console(highlight=False, soft_wrap=True)


@click.group()
def users() -> None:
    """Console users (who may sign in at /admin/): add, list, remove."""


def _password(from_stdin: bool) -> str:
    """The new password: the first line of stdin, or typed twice at a hidden prompt."""
    if from_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise UsageError("--password-stdin: standard input had no password on its first line")
        return console_users.check_password(line)
    while True:
        typed = click.prompt("Password", hide_input=True, confirmation_prompt="Repeat the password")
        if not isinstance(typed, str):
            raise UsageError("no password given")
        try:
            return console_users.check_password(typed)
        except ValueError as exc:
            if not sys.stdin.isatty():
                raise
            click.echo(f"{exc}; try again", err=True)


@users.command("add")
@click.argument("email")
@click.option(
    "--role", required=True, type=click.Choice(console_users.ROLES), help="viewer sees; sender also sends; admin all."
)
@click.option("--password-stdin", "password_stdin", is_flag=True, help="Read the password from standard input.")
def users_add(email: str, role: str, password_stdin: bool) -> None:
    """Add a console user EMAIL with a role and a password (argon2-hashed; at least 10 characters)."""
    address = console_users.normalise_email(email)  # a bad address fails before the password is asked
    password = _password(password_stdin)
    store = Store.open(Settings.from_env())
    try:
        user = console_users.add_user(store, address, role, password)
    finally:
        store.close()
    out.print(f"added {user.email} as {user.role}: they sign in at /admin/sign-in", markup=False)


@users.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def users_list(fmt: str) -> None:
    """Every console user: address, role, since when, and whether the account is locked now."""
    store = Store.open(Settings.from_env())
    try:
        found = store.users()
    finally:
        store.close()
    rows = [
        {
            "email": u.email,
            "role": u.role,
            "created": u.created_at.isoformat(timespec="seconds"),
            "locked_until": (
                u.locked_until.isoformat(timespec="seconds") if u.locked_until and console_users.is_locked(u) else None
            ),
        }
        for u in found
    ]
    if fmt == "json":
        click.echo(json.dumps({"users": rows}, indent=2))
        return
    table = Table(title=f"{len(rows)} console user(s)", title_justify="left")
    for column in ("Email", "Role", "Created", "Locked until"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["email"], row["role"], row["created"], row["locked_until"] or "")
    out.print(table)


@users.command("remove")
@click.argument("email")
def users_remove(email: str) -> None:
    """Remove the console user EMAIL (their sessions end at their next request)."""
    store = Store.open(Settings.from_env())
    try:
        console_users.remove_user(store, email)
    finally:
        store.close()
    out.print(f"removed {email.strip().lower()}", markup=False)
