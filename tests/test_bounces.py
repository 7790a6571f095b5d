"""Bounces: VERP envelope senders, DSNs read from a Maildir, hard and soft bounces, through the
CLI on the bundled example with real Redis, a real SMTP server (aiosmtpd) and the record."""

from __future__ import annotations

import json
import mailbox
from pathlib import Path

import pytest
import redis

from notifier.channels.email import verp
from notifier.channels.email.verp import Verp
from notifier.errors import BadToken
from tests.conftest import Project, SmtpServer
from tests.record_fixtures import SOC

JANE = "jane.smith@telford-wrekin-csp.example"
BOUNCE_DOMAIN = "bounces.pcc.example"


@pytest.fixture
def example(project: Project, redis_url: str, smtp_server: SmtpServer) -> Project:
    """The bundled example on the test Redis and SMTP server, with VERP on."""
    project.env.update({"NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_SMTP_URL": smtp_server.url, "COLUMNS": "300"})
    main = project.config / "notifier.yaml"
    main.write_text(
        main.read_text().replace(
            "  reply_to: policy@pcc.example\n", f"  reply_to: policy@pcc.example\n  bounce_domain: {BOUNCE_DOMAIN}\n"
        )
    )
    return project


def dsn(to: str, recipient: str, *, status: str = "5.1.1", action: str = "failed", message_id: str = "") -> bytes:
    """An RFC 3464 delivery status notification, as a receiving MTA sends it to the envelope sender."""
    diagnostic = f"smtp; {'550' if status[0] == '5' else '451'} {status} mailbox problem"
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.telford-wrekin-csp.example>\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.telford-wrekin-csp.example\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: {diagnostic}\r\n"
        "\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: policy@pcc.example\r\nTo: {recipient}\r\nMessage-ID: {message_id}\r\n"
        "--B--\r\n"
    ).encode()


def drop(path: Path, *messages: bytes) -> Path:
    """A Maildir at ``path`` holding ``messages`` (new, unseen)."""
    box = mailbox.Maildir(str(path), create=True)
    for message in messages:
        box.add(message)
    return path


def statuses(project: Project) -> dict[tuple[str, str, str], str]:
    rows = json.loads(project.run("report", SOC, "--format", "json", check=True).stdout)["deliveries"]
    return {(r["event"], r["channel"], r["recipient"]): r["status"] for r in rows}


def envelope_of(smtp: SmtpServer, address: str, nth: int = 0) -> str:
    with smtp.handler.lock:
        found = [sender for sender, rcpts in smtp.handler.envelopes if address in (r.lower() for r in rcpts)]
    return found[nth]


def test_each_email_goes_out_with_an_opaque_verp_envelope_sender_of_its_own(
    example: Project, smtp_server: SmtpServer
) -> None:
    example.run("send", SOC, "opened", "--wait", check=True)
    senders = [sender for sender, _ in smtp_server.handler.envelopes]
    assert len(set(senders)) == len(senders) > 1, "one envelope sender per delivery"
    for sender in senders:
        local, _, domain = sender.partition("@")
        assert domain == BOUNCE_DOMAIN and local.startswith("bounces+") and len(local) <= 64
    assert all("jane" not in s.lower() and "telford" not in s.lower() for s in senders)
    assert all(str(m["From"]) == "PCC Policy Team <policy@pcc.example>" for m in smtp_server.handler.messages)


def test_a_dsn_in_a_maildir_marks_the_delivery_bounced_and_suppresses_the_address(
    example: Project, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    example.run("send", SOC, "opened", "--wait", check=True)
    box = drop(tmp_path / "bounces", dsn(envelope_of(smtp_server, JANE), JANE))

    result = example.run("bounces", "import", str(box), check=True)
    assert "1 delivery(ies) marked bounced" in result.stdout
    found = statuses(example)
    assert found[("opened", "email", JANE)] == "bounced"
    assert list(found.values()).count("bounced") == 1, "only the delivery the bounce names"

    example.run("send", SOC, "reminder", "--early", "--wait", check=True)
    assert statuses(example)[("reminder", "email", JANE)] == "suppressed"
    assert len(smtp_server.handler.to(JANE)) == 1, "a bounced address is told nothing more"
    table = example.run("report", SOC, check=True).stdout
    assert "bounced" in table
    evidence = example.run("evidence", SOC, "--out", str(tmp_path / "evidence"), check=True).stdout
    assert "1 e-mail bounced after sending" in " ".join(evidence.split())

    again = example.run("bounces", "import", str(drop(tmp_path / "again", dsn(envelope_of(smtp_server, JANE), JANE))))
    assert again.returncode == 0 and "0 delivery(ies) marked bounced" in again.stdout


def test_a_bounce_with_a_forged_verp_address_changes_nothing(
    example: Project, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    example.run("send", SOC, "opened", "--wait", check=True)
    real = envelope_of(smtp_server, JANE)
    local, _, domain = real.partition("@")
    forged = f"{local[:-4]}{'AAAA' if not local.endswith('AAAA') else 'BBBB'}@{domain}"
    box = drop(tmp_path / "bounces", dsn(forged, JANE))

    result = example.run("bounces", "import", str(box), check=True)
    assert "1 naming no delivery of ours" in result.stdout
    assert "bounced" not in statuses(example).values()


def test_three_soft_bounces_of_one_address_suppress_it_as_a_hard_one_does(
    example: Project, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    for n, event in enumerate(("opened", "reminder", "closed")):
        example.run("send", SOC, event, "--early", "--wait", check=True)
        soft = dsn(envelope_of(smtp_server, JANE, n), JANE, status="4.2.2", action="delayed")
        result = example.run("bounces", "import", str(drop(tmp_path / event, soft, soft)), check=True)
        assert ("1 delivery(ies) marked bounced" in result.stdout) == (event == "closed")
    found = statuses(example)
    assert found[("closed", "email", JANE)] == "bounced"
    assert found[("opened", "email", JANE)] == "sent", "a soft bounce alone leaves the delivery as it was"


def test_importing_a_folder_that_is_not_a_maildir_exits_1_naming_it(example: Project, tmp_path: Path) -> None:
    result = example.run("bounces", "import", str(tmp_path / "nowhere"))
    assert result.returncode == 1 and "nowhere" in result.stderr and "not a Maildir" in result.stderr


def test_a_verp_id_names_its_delivery_alone_and_cannot_be_forged_or_read() -> None:
    sender = Verp("pcc.example", b"test-secret-key").sender("0123456789abcdef0123456789abcdef")
    local = sender.partition("@")[0]
    assert len(local) <= 64 and local.startswith("bounces+")
    (opaque,) = verp.find(f"To: <{sender}>")
    assert verp.unseal(b"test-secret-key", opaque) == "0123456789abcdef0123456789abcdef"
    with pytest.raises(BadToken):
        verp.unseal(b"another-key", opaque)
    with pytest.raises(BadToken):
        verp.unseal(b"test-secret-key", opaque[:-2] + ("AA" if not opaque.endswith("AA") else "BB"))


def test_soft_bounces_still_count_after_redis_lost_everything(
    example: Project, smtp_server: SmtpServer, tmp_path: Path, redis_url: str
) -> None:
    for n, event in enumerate(("opened", "reminder", "closed")):
        example.run("send", SOC, event, "--early", "--wait", check=True)
        soft = dsn(envelope_of(smtp_server, JANE, n), JANE, status="4.2.2", action="delayed")
        if event == "closed":
            redis.Redis.from_url(redis_url).flushdb()  # as FLUSHALL: the record keeps the two counted
        result = example.run("bounces", "import", str(drop(tmp_path / event, soft)), check=True)
        assert ("1 delivery(ies) marked bounced" in result.stdout) == (event == "closed")
    assert statuses(example)[("closed", "email", JANE)] == "bounced"
