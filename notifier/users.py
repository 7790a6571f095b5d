"""Console users: who may sign in to ``/admin/``, their argon2 password hashes, and the lock
that five failed sign-ins in a row put on an account.

Users live in the consultation record (:class:`notifier.store.Store`, table ``users``). A
password is never stored: only its argon2id hash (argon2-cffi's ``PasswordHasher`` and its
current parameters; a hash made with older ones is replaced at the next good sign-in).

A sign-in with an unknown address verifies the password against a dummy hash, so it takes as
long as one with a known address and a wrong password: the time of an answer does not tell
who has an account, and neither does its message (:class:`~notifier.errors.SignInRefused`).
Five failures in a row lock the account for 15 minutes (:class:`~notifier.errors.AccountLocked`),
whatever the password; a good sign-in clears the count. Every sign-in, refusal, lock, and
every user added or removed goes to the audit log.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from notifier.config._email import check_email
from notifier.errors import AccountLocked, InvalidValueError, SignInRefused, UsageError

if TYPE_CHECKING:
    from notifier.store import Store, User

ROLES: tuple[str, ...] = ("viewer", "sender", "admin")
#: Failed sign-ins in a row that lock an account, and for how long.
MAX_FAILED_SIGNINS = 5
LOCK_FOR = timedelta(minutes=15)
#: NCSC and NIST SP 800-63B: length is what makes a password strong; no composition rules.
MIN_PASSWORD_LENGTH = 10
#: argon2 hashes whatever it is given; a bound keeps one sign-in from costing a megabyte of hashing.
MAX_PASSWORD_LENGTH = 1_024
#: Audit log ``actor`` of what a command did (as the other commands record it).
CLI_ACTOR = "cli"
REFUSED = "The email address or password is not right."

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """A hash no password is checked against for real: made once, on the first sign-in."""
    return _hasher.hash("an unknown address is checked against this, for the time it takes")


def check_password(password: str) -> str:
    """``password`` when it is long enough and not too long, else InvalidValueError saying which."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidValueError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidValueError(f"the password must be at most {MAX_PASSWORD_LENGTH:,} characters long")
    return password


def check_role(role: str) -> str:
    """``role`` when it is one of :data:`ROLES`, else InvalidValueError naming them."""
    if role not in ROLES:
        raise InvalidValueError(f"the role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def normalise_email(email: str) -> str:
    """The address as users are keyed: checked (InvalidValueError if it is not one) and lower case."""
    return check_email(email.strip()).lower()


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (checked with :func:`check_password` first)."""
    return _hasher.hash(check_password(password))


def add_user(store: Store, email: str, role: str, password: str, *, actor: str = CLI_ACTOR) -> User:
    """Add a console user with an argon2 hash of ``password``; audited as done by ``actor``.

    InvalidValueError for a bad address, role or password; UsageError if the address has a user.
    """
    address = normalise_email(email)
    check_role(role)
    if store.user(address) is not None:
        raise UsageError(f"a console user {address} already exists (remove them first to change their role)")
    user = store.add_user(address, role, hash_password(password))
    store.audit(actor, "user add", detail=f"{address} as {role}")
    return user


def remove_user(store: Store, email: str, *, actor: str = CLI_ACTOR) -> None:
    """Remove a console user (their open sessions end at their next request); UsageError if there is none."""
    address = email.strip().lower()
    if not store.remove_user(address):
        raise UsageError(f"there is no console user {address}")
    store.audit(actor, "user remove", detail=address)


def authenticate(store: Store, email: str, password: str, *, now: datetime | None = None) -> User:
    """The user whose address and password these are, or :class:`SignInRefused` (or its
    :class:`AccountLocked` while the account is locked). Takes about one argon2 verification
    whether or not the address has a user. ``now`` is the time of the attempt (the clock by default)."""
    moment = now or datetime.now(UTC)
    address = email.strip().lower()[:320]
    user = store.user(address) if address else None
    if user is not None and user.locked_until is not None and is_locked(user, now=moment):
        store.audit(address, "sign-in refused", detail="account locked")
        raise AccountLocked(_locked_message(user.locked_until, moment), until=user.locked_until)
    if user is None or not _verify(user.password_hash, password):
        _failed(store, address, user, moment)
        raise SignInRefused(REFUSED)
    store.set_signin_state(address, failed_signins=0, locked_until=None)
    if user.password_hash is not None and _hasher.check_needs_rehash(user.password_hash):
        store.set_password_hash(address, _hasher.hash(password))
    store.audit(address, "sign-in")
    return user


def is_locked(user: User, *, now: datetime | None = None) -> bool:
    """Whether the account refuses every sign-in now (after five failed ones in a row)."""
    return user.locked_until is not None and (now or datetime.now(UTC)) < user.locked_until


def _verify(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; a user without a hash (or with a broken one) matches nothing,
    after the same work as a real check."""
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def _failed(store: Store, address: str, user: User | None, moment: datetime) -> None:
    """Count a failed sign-in; the fifth in a row (since the last lock ran out) locks the account."""
    if user is None:
        store.audit(address or "(no address)", "sign-in refused", detail="unknown address")
        return
    lock_over = user.locked_until is not None  # and past, or authenticate would have refused it
    failed = (0 if lock_over else user.failed_signins) + 1
    if failed >= MAX_FAILED_SIGNINS:
        until = moment + LOCK_FOR
        store.set_signin_state(address, failed_signins=failed, locked_until=until)
        store.audit(address, "account locked", detail=f"{failed} failed sign-ins in a row; until {until.isoformat()}")
    else:
        store.set_signin_state(address, failed_signins=failed, locked_until=None)
        store.audit(address, "sign-in refused", detail=f"wrong password ({failed} in a row)")


def _locked_message(until: datetime, moment: datetime) -> str:
    minutes = max(1, -(-int((until - moment).total_seconds()) // 60))
    return (
        f"This account is locked after {MAX_FAILED_SIGNINS} failed sign-ins in a row. "
        f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."
    )
