"""Calendar invites (``attach_calendar: true``): the ``.ics`` parsed back from the e-mail the SMTP
server (aiosmtpd) received, its UID kept and its SEQUENCE raised when the deadline is extended."""

from __future__ import annotations

from datetime import UTC, date, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import icalendar
import pytest

from notifier.channels.base import Attachment, EmailPayload
from notifier.channels.email import Sender, build_message
from notifier.rendering import EmailContent
from tests.conftest import Project, SmtpServer
from tests.test_scheduler import CONSULTATION, SOC, edit

JANE = "jane.smith@telford-wrekin-csp.example"


@pytest.fixture
def example(project: Project, redis_url: str, smtp_server: SmtpServer) -> Project:
    """The bundled example on the test Redis and SMTP server, ``opened`` and ``reminder`` with invites."""
    project.env.update({"NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_SMTP_URL": smtp_server.url})
    edit(project, CONSULTATION, r"^    at: opens$", "    at: opens\n    attach_calendar: true")
    edit(project, CONSULTATION, r"^    at: closes - 7d$", "    at: closes - 7d\n    attach_calendar: true")
    return project


def invite(message: EmailMessage) -> icalendar.Event:
    """The one VEVENT of the ``.ics`` attached to ``message``."""
    found = [part for part in message.iter_attachments() if part.get_content_type() == "text/calendar"]
    assert len(found) == 1, "one calendar attachment"
    assert found[0].get_filename() == f"{SOC}.ics"
    calendar = icalendar.Calendar.from_ical(found[0].get_content())
    events = list(calendar.walk("VEVENT"))
    assert len(events) == 1 and isinstance(events[0], icalendar.Event)
    return events[0]


def test_an_opened_email_carries_the_closing_date_as_an_all_day_calendar_event(
    example: Project, smtp_server: SmtpServer
) -> None:
    example.run("send", SOC, "opened", "--wait", check=True)
    message = smtp_server.handler.to(JANE)[0]
    assert message.get_body(("plain",)) is not None, "the text is still the body"
    event = invite(message)
    assert event.decoded("dtstart") == date(2019, 8, 15) and event.decoded("dtend") == date(2019, 8, 16)
    assert "Serious and Organised Crime Strategy" in str(event["summary"])
    assert str(event["uid"]) == f"{SOC}-closes@pcc.example"


def test_the_invite_keeps_its_uid_and_raises_its_sequence_when_the_deadline_is_extended(
    example: Project, smtp_server: SmtpServer
) -> None:
    example.run("send", SOC, "opened", "--wait", check=True)
    first = invite(smtp_server.handler.to(JANE)[0])
    edit(example, CONSULTATION, r"^closes: .*$", "closes: 2019-08-22 23:59")
    example.run("send", SOC, "reminder", "--early", "--wait", check=True)
    second = invite(smtp_server.handler.to(JANE)[1])
    assert str(second["uid"]) == str(first["uid"])
    assert int(second.decoded("sequence")) > int(first.decoded("sequence"))
    assert second.decoded("dtstart") == date(2019, 8, 22)


def test_an_event_without_attach_calendar_sends_no_invite(
    project: Project, redis_url: str, smtp_server: SmtpServer
) -> None:
    project.env.update({"NOTIFIER_REDIS_URL": redis_url, "NOTIFIER_SMTP_URL": smtp_server.url})
    project.run("send", SOC, "opened", "--wait", check=True)
    assert not list(smtp_server.handler.to(JANE)[0].iter_attachments())


def test_a_deadline_at_a_time_of_day_is_an_invite_at_that_time(example: Project, smtp_server: SmtpServer) -> None:
    edit(example, CONSULTATION, r"^closes: .*$", "closes: 2019-08-15 17:00")
    example.run("send", SOC, "opened", "--wait", check=True)
    event = invite(smtp_server.handler.to(JANE)[0])
    assert event.decoded("dtstart") == datetime(2019, 8, 15, 16, 0, tzinfo=UTC)  # 17:00 BST


def test_an_attachment_goes_in_multipart_mixed_after_the_text_and_html() -> None:
    content = EmailContent(subject="S", text="Hello\n", html="<p>Hello</p>")
    payload = EmailPayload(
        "a@b.example", "A", content, "https://x.example/u/t", (Attachment("c.ics", "text/calendar", b"X" * 200),)
    )
    raw = build_message(Sender.parse("P <p@pcc.example>", None), payload, msgid="<0123abcd@pcc.example>")
    message = message_from_bytes(raw, policy=policy.default)
    assert message.get_content_type() == "multipart/mixed"
    assert message.get_body(("html",)).get_content().strip() == "<p>Hello</p>"  # type: ignore[union-attr]
    attached = next(iter(message.iter_attachments()))
    assert attached.get_content() == "X" * 200 or attached.get_payload(decode=True) == b"X" * 200
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
