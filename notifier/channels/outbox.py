"""The social outbox: where an account without a token (or a webhook with ``outbox: true``)
posts instead, one JSON object per line in ``$NOTIFIER_DATA_DIR/outbox/social/<account>.jsonl``.

Each line holds ``account``, ``platform``, ``delivery`` (the delivery key), ``time`` (when
written, UTC), ``text`` (as the platform would have posted it), ``link``, ``event``,
``event_at``, ``consultation``, ``consultation_title``, ``opens`` and ``closes``.

Lines are appended under an exclusive ``flock`` on the file, so threads and processes
never interleave them, and a delivery already in the file is not written again (a retry
after a crash between writing and recording returns the first line's receipt). The
receipt's id is ``outbox:<file name>:<line number>``.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from notifier.channels import http, platforms
from notifier.channels.base import Addressing, Delivery, PostPayload, Receipt
from notifier.config import Account
from notifier.errors import TransientDeliveryError


def outbox_path(data_dir: Path, account_id: str) -> Path:
    """``<data_dir>/outbox/social/<account>.jsonl``."""
    return Path(data_dir) / "outbox" / "social" / f"{account_id}.jsonl"


class OutboxChannel:
    """Writes an account's posts to its JSONL outbox file instead of the platform."""

    platform = "outbox"
    addressing: ClassVar[Addressing] = Addressing.ACCOUNT  # one post per account, in its platform's shape

    def __init__(self, account: Account, *, data_dir: Path) -> None:
        """The outbox of ``account`` under ``data_dir`` (the directory is made on first write)."""
        self.name = account.id
        self.account = account
        self.path = outbox_path(data_dir, account.id)
        self.rules = platforms.rules(account.platform)  # its posts are shaped as the platform's

    def __repr__(self) -> str:
        return f"OutboxChannel({self.name!r}, path={str(self.path)!r})"

    def line_for(self, delivery: Delivery, payload: PostPayload) -> dict[str, Any]:
        """The JSON object written for one delivery (without the time, added when written)."""
        text = http.posted_text(self.rules, payload)  # the link in the text, as live
        return {
            "account": self.name,
            "platform": self.account.platform,
            "delivery": delivery.key,
            "text": text,
            "link": payload.link,
            "event": payload.event,
            "event_at": payload.event_at.isoformat(),
            "consultation": payload.consultation_id,
            "consultation_title": payload.consultation_title,
            "opens": payload.opens.isoformat(),
            "closes": payload.closes.isoformat(),
        }

    def send(self, delivery: Delivery, payload: PostPayload) -> Receipt:
        """Append the post as one line, unless this delivery is already in the file."""
        entry = {"time": datetime.now(UTC).isoformat(timespec="seconds"), **self.line_for(delivery, payload)}
        # U+2028/2029 stay escaped: some line readers (str.splitlines) split on them.
        line = json.dumps(entry, ensure_ascii=False).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        line += "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a+", encoding="utf-8") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                try:
                    f.seek(0)
                    existing = f.read()
                    number = _find(existing, delivery.key)
                    if number is None:
                        if existing and not existing.endswith("\n"):
                            f.write("\n")  # a torn last line must not swallow this one
                            existing += "\n"
                        f.write(line)
                        f.flush()
                        os.fsync(f.fileno())
                        number = existing.count("\n") + 1
                finally:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        except OSError as exc:
            raise TransientDeliveryError(f"outbox {self.name!r}: cannot write {self.path}: {exc}") from exc
        return Receipt(provider_id=f"outbox:{self.path.name}:{number}", outbox=True)

    def close(self) -> None:
        """Nothing to release: the file is opened per post."""


def _find(content: str, key: str) -> int | None:
    """The 1-based line number of the entry for delivery ``key`` in ``content``, or None."""
    if key not in content:
        return None
    for number, raw in enumerate(content.split("\n"), start=1):
        if key not in raw:
            continue
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("delivery") == key:
            return number
    return None
