"""What `notifier send`, `retry` and `report` do around the edges (issue 10): warnings never
block, early needs --early, the outbox is not "sent", failures can be retried, times say their zone."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import redis

from notifier.ledger import Ledger, Outcome, Record
from tests.conftest import Project, SmtpServer

JANE = "jane.smith@telford-wrekin-csp.example"
ZOE = "zoe.olafsdottir@shropshire-csp.example"


@pytest.fixture
def wide(project: Project, redis_url: str) -> Project:
    """The example on the test Redis, printing tables wide enough not to wrap."""
    project.env.update({"NOTIFIER_REDIS_URL": redis_url, "COLUMNS": "300"})
    return project


def add_consultation(project: Project, cid: str, opens: str, closes: str, *, audience: str | None = None) -> None:
    """A copy of the example consultation as ``cid`` with these dates, without its scheduled
    ``outcome`` (so ``outcome`` is an event fired on demand), and another audience if given."""
    text = (project.config / "consultations" / "soc-strategy-2019.yaml").read_text()
    text = text.split("  # The final strategy is published")[0]
    text = text.replace("opens: 2019-07-09 09:00", f"opens: {opens}")
    text = text.replace("closes: 2019-08-15 23:59", f"closes: {closes}")
    if audience:
        text = text.replace("audience: [key-partners, media, police-crime-panel]", f"audience: {audience}", 1)
    project.write(f"config/consultations/{cid}.yaml", text)


def test_a_warning_is_printed_and_an_outcome_is_still_sent(wide: Project) -> None:
    # Jane is "Jane Smith" on the partners' lists and "J. Smith" on another: a warning in validate.
    wide.write(
        "config/stakeholders/extra.yaml",
        f"lists:\n  extra:\n    name: Extra\n    members:\n      - {{name: J. Smith, email: {JANE}}}\n",
    )
    add_consultation(
        wide,
        "past-2025",
        "2025-01-06 09:00",
        "2025-02-14 23:59",
        audience="[key-partners, media, police-crime-panel, extra]",
    )
    result = wide.run("send", "past-2025", "outcome", "--wait")
    assert result.returncode == 0, result.stderr
    assert "'J. Smith'" in result.stderr, "the warning is printed"
    assert "fired past-2025:outcome:1" in result.stdout
    report = json.loads(wide.run("report", "past-2025", "--format", "json", check=True).stdout)
    assert any(r["recipient"] == JANE and r["status"] == "outbox" for r in report["deliveries"])


def test_a_scheduled_event_before_its_time_is_refused_without_early(wide: Project, redis_url: str) -> None:
    add_consultation(wide, "violence-reduction-2099", "2099-01-05 09:00", "2099-02-13 23:59")
    result = wide.run("send", "violence-reduction-2099", "closed")
    assert result.returncode == 1
    assert "--early" in result.stderr and "Fri 13 Feb 2099 23:59 GMT" in result.stderr
    assert "Traceback" not in result.stderr
    ledger = Ledger(redis.Redis.from_url(redis_url))
    assert ledger.fired("violence-reduction-2099", "closed") is None, "nothing fired: it still goes at its time"
    assert not (wide.data / "outbox").exists(), "nothing sent"

    result = wide.run("send", "violence-reduction-2099", "closed", "--early", "--wait")
    assert result.returncode == 0, result.stderr
    assert ledger.fired("violence-reduction-2099", "closed") == "violence-reduction-2099:closed:1"


def test_an_outcome_before_the_consultation_closes_is_sent_with_a_warning(wide: Project) -> None:
    add_consultation(wide, "violence-reduction-2099", "2099-01-05 09:00", "2099-02-13 23:59")
    result = wide.run("send", "violence-reduction-2099", "outcome", "--wait")
    assert result.returncode == 0, result.stderr
    assert (
        "warning: event 'outcome' is sent before the consultation closes (Fri 13 Feb 2099 23:59 GMT)" in result.stderr
    )
    assert "fired violence-reduction-2099:outcome:1" in result.stdout


def test_an_email_in_the_maildir_and_a_post_in_the_outbox_are_outbox_not_sent(wide: Project) -> None:
    result = wide.run("send", "soc-strategy-2019", "opened", "--wait")
    assert result.returncode == 0, "outbox deliveries are a success"
    assert "outbox" in result.stdout, "the summary counts them as outbox"
    report = json.loads(wide.run("report", "soc-strategy-2019", "--format", "json", check=True).stdout)
    statuses = {(r["channel"] == "email", r["status"]) for r in report["deliveries"]}
    assert statuses == {(True, "outbox"), (True, "suppressed"), (False, "outbox")}
    assert all("sent" not in s and s["outbox"] for s in report["summary"])
    table = wide.run("report", "soc-strategy-2019", check=True).stdout
    assert " sent " not in table and "outbox" in table


def test_retry_sends_only_the_failed_deliveries_again_with_the_same_message_id(
    wide: Project, smtp_server: SmtpServer
) -> None:
    wide.env.update({"NOTIFIER_SMTP_URL": smtp_server.url, "NOTIFIER_MAX_ATTEMPTS": "1"})
    smtp_server.handler.always[ZOE] = "451 4.3.0 relay unavailable"  # the outage: transient, out of attempts
    smtp_server.handler.data_script[JANE] = ["554 5.0.0 relay refused the message"]  # permanent
    result = wide.run("send", "soc-strategy-2019", "opened", "--wait")
    assert result.returncode == 2, result.stderr
    assert "gave up after 1 attempt: " in result.stderr, "one attempt is singular"
    delivered = smtp_server.handler.count()
    [refused] = smtp_server.handler.refused

    del smtp_server.handler.always[ZOE]  # the relay is back
    result = wide.run("retry", "soc-strategy-2019", "opened", "--wait")
    assert result.returncode == 0, result.stderr
    assert "retrying 2 failed deliveries of soc-strategy-2019:opened:1" in result.stdout
    assert smtp_server.handler.count() == delivered + 2, "only the two failed ones are sent again"
    [to_jane] = smtp_server.handler.to(JANE)
    assert to_jane["Message-ID"] == refused["Message-ID"], "the same Message-ID as the failed attempt"
    assert len(smtp_server.handler.to(ZOE)) == 1
    report = json.loads(wide.run("report", "soc-strategy-2019", "--format", "json", check=True).stdout)
    rows = {r["recipient"]: r for r in report["deliveries"] if r["channel"] == "email"}
    assert rows[JANE]["status"] == rows[ZOE]["status"] == "sent"

    again = wide.run("retry", "soc-strategy-2019", "opened", "--wait")
    assert again.returncode == 0 and "no failed deliveries; nothing to retry" in again.stdout
    assert smtp_server.handler.count() == delivered + 2


def test_retry_of_an_event_that_never_fired_is_a_clear_error(wide: Project) -> None:
    result = wide.run("retry", "soc-strategy-2019", "closed")
    assert result.returncode == 1
    assert "soc-strategy-2019 closed has not fired" in result.stderr and "Traceback" not in result.stderr


def test_report_times_are_local_with_the_year_and_csv_json_name_their_offset(wide: Project) -> None:
    # Paris is an hour ahead of UTC in November (and two in summer): a UTC time would show.
    settings = wide.config / "notifier.yaml"
    settings.write_text(settings.read_text().replace("timezone: Europe/London", "timezone: Europe/Paris"))
    wide.run("send", "soc-strategy-2019", "opened", "--wait", check=True)
    now = datetime.now(ZoneInfo("Europe/Paris"))
    report = json.loads(wide.run("report", "soc-strategy-2019", "--format", "json", check=True).stdout)
    [jane] = [r for r in report["deliveries"] if r["recipient"] == JANE]
    for key in ("created", "updated", "sent_at"):
        moment = datetime.fromisoformat(jane[key])
        assert moment.utcoffset() == now.utcoffset(), (key, jane[key])
        assert jane[key].endswith(f"{now:%z}"[:3] + ":" + f"{now:%z}"[3:])
    assert datetime.fromisoformat(report["summary"][0]["fired_at"]).utcoffset() == now.utcoffset()
    csv = wide.run("report", "soc-strategy-2019", "--format", "csv", check=True).stdout
    assert jane["sent_at"] in csv

    wide.env["COLUMNS"] = "80"
    table = wide.run("report", "soc-strategy-2019", check=True).stdout
    sent = datetime.fromisoformat(jane["sent_at"])
    assert f"{sent:%d %b %Y %H:%M}" in table, "day, month in words, year, local time"
    assert "Europe/Paris" in table, "the zone is named"
    assert max(map(len, table.splitlines())) <= 80


def test_requeue_puts_only_failed_deliveries_back_to_pending_and_an_outbox_one_stays_final(
    redis_client: redis.Redis,
) -> None:
    ledger = Ledger(redis_client)
    occurrence = ledger.claim_occurrence("soc", "opened", at=datetime.now(UTC))
    assert occurrence is not None
    sam = "sam@pcc.example"
    ledger.add(occurrence, [Record(channel="email", recipient=r) for r in (JANE, ZOE, sam)])
    claims = ledger.claim(occurrence, [f"email|{r}" for r in (JANE, ZOE, sam)], owner="w1|m1")
    assert [c.state for c in claims] == ["claimed"] * 3
    ledger.mark(
        occurrence,
        [
            (f"email|{JANE}", Outcome("outbox", 1, provider_id="<a@pcc.example>")),
            (f"email|{ZOE}", Outcome("failed", 8, error="gave up after 8 attempts: 451 try later")),
            (f"email|{sam}", Outcome("failed", 1, error="554 refused")),
        ],
        owner="w1|m1",
    )

    assert sorted(ledger.requeue_failed(occurrence)) == [f"email|{sam}", f"email|{ZOE}"]
    assert ledger.counts(occurrence) == {"email": {"outbox": 1, "pending": 2}}
    zoe = ledger.record(occurrence, "email", ZOE)
    assert zoe is not None and (zoe.status, zoe.attempts) == ("pending", 0), "a fresh count of attempts"
    assert zoe.error == "gave up after 8 attempts: 451 try later", "the last error is kept until the next attempt"
    assert ledger.requeue_failed(occurrence) == [], "nothing failed is left"
    again = ledger.claim(occurrence, [f"email|{r}" for r in (JANE, ZOE)], owner="w2|m2")
    assert [c.state for c in again] == ["final", "claimed"], "an outbox delivery is never sent again"


def test_an_80_column_report_of_several_occurrences_still_fits(wide: Project) -> None:
    wide.run("send", "soc-strategy-2019", "opened", "--wait", check=True)
    wide.run("send", "soc-strategy-2019", "opened", "--again", "--wait", check=True)
    wide.env["COLUMNS"] = "80"
    table = wide.run("report", "soc-strategy-2019", check=True).stdout
    assert "opened:1" in table and "opened:2" in table
    assert max(map(len, table.splitlines())) <= 80, "the Occurrence column does not push the table past 80"
