"""``notifier rehearse``: the whole campaign into an outbox, never live, apart from the real ledger."""

from __future__ import annotations

import json
import mailbox

import redis

from notifier.ledger import Ledger
from tests.conftest import Project, SmtpServer

JANE = "jane.smith@telford-wrekin-csp.example"


def test_rehearse_prints_the_campaign_and_sends_nothing_live(
    project: Project, redis_url: str, redis_client: redis.Redis, smtp_server: SmtpServer
) -> None:
    # Live settings are present: a real SMTP server and an X token. A rehearsal ignores both.
    project.env.update(
        {
            "NOTIFIER_REDIS_URL": redis_url,
            "NOTIFIER_SMTP_URL": smtp_server.url,
            "NOTIFIER_PCC_X_TOKEN": "live-token-must-not-be-used",
            "COLUMNS": "400",
        }
    )
    Ledger(redis_client).suppress("zoe.olafsdottir@shropshire-csp.example", "unsubscribed")

    result = project.run("rehearse", "soc-strategy-2019", check=True)

    out = result.stdout
    for line in (
        "Tue 09 Jul 2019 09:00 BST",
        "Thu 08 Aug 2019 23:59 BST",
        "Thu 15 Aug 2019 23:59 BST",
        "Thu 12 Sep 2019 10:00 BST",
    ):
        assert line in out
    assert "Consultation open: Serious and Organised Crime Strategy" in out
    assert "Now published: the final Serious and Organised Crime Strategy" in out
    assert "not sent (unsubscribed)" in out, "real suppressions apply to the rehearsal"
    assert smtp_server.handler.count() == 0

    [folder] = (project.data / "rehearsals").iterdir()
    box = mailbox.Maildir(str(folder / "outbox" / "email"), create=False)
    to_jane = [m for m in box if JANE in str(m["To"]).lower()]
    assert len(to_jane) == 4, "one e-mail per event"
    x_posts = [json.loads(line) for line in (folder / "outbox" / "social" / "pcc-x.jsonl").read_text().splitlines()]
    assert [p["event"] for p in x_posts] == ["opened", "reminder", "closed", "outcome"]

    real = Ledger(redis_client)
    assert real.fired("soc-strategy-2019", "opened") is None, "a rehearsal never marks a real event fired"
    assert real.occurrences("soc-strategy-2019") == []
    assert not (project.data / "outbox").exists()


def test_rehearse_an_unknown_consultation_is_a_clear_error(project: Project, redis_url: str) -> None:
    project.env["NOTIFIER_REDIS_URL"] = redis_url
    result = project.run("rehearse", "no-such-consultation")
    assert result.returncode == 1
    assert "no-such-consultation" in result.stderr
