"""A config reload while a worker thread is posting: the post still goes out once and is
recorded sent.

Whichever thread first sees a new config drops the channels built from the old one. An
HTTP channel's client closed under a thread posting on it broke that post (httpx read from
a closed socket, or refused to send on a closed client), which was then retried: a second
post, or an error the engine did not know. Here a real webhook receiver on loopback holds
the reply of a post while another thread reloads the config.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from notifier import delivery
from notifier.channels.base import Delivery, PostPayload
from notifier.channels.webhook import WebhookChannel
from notifier.config import Account, Settings
from notifier.errors import TransientDeliveryError
from notifier.runtime import Runtime
from notifier.service import Service
from tests.conftest import Project, wait_until
from tests.platforms import Platforms

SECRET = b"test-secret-key"  # the project's NOTIFIER_SECRET_KEY signs webhook bodies


@pytest.fixture
def platforms() -> Iterator[Platforms]:
    """A webhook receiver on a loopback port."""
    with Platforms() as server:
        server.webhook_key = SECRET
        yield server


def _website_only(project: Project, platforms: Platforms, redis_url: str) -> None:
    """The example project with one live website account, the only channel of ``opened``."""
    main = project.config / "notifier.yaml"
    main.write_text(
        main.read_text().replace(
            "https://www.pcc.example/hooks/notifier, outbox: true", f"'{platforms.url}/hooks/website'"
        )
    )
    consultation = project.config / "consultations" / "soc-strategy-2019.yaml"
    consultation.write_text(
        consultation.read_text().replace(
            "channels: [email, pcc-x, pcc-facebook, pcc-website, police-website]", "channels: [pcc-website]"
        )
    )
    project.env["NOTIFIER_REDIS_URL"] = redis_url


def test_a_config_reload_mid_post_still_posts_once_and_records_it_sent(
    project: Project, platforms: Platforms, redis_url: str
) -> None:
    _website_only(project, platforms, redis_url)
    settings = Settings.from_env(project.env)
    service = Service(settings)
    rt = Runtime(settings)
    try:
        occurrence = service.fire("soc-strategy-2019", "opened", early=True)
        assert occurrence is not None
        [batch] = delivery.fan_out(rt, occurrence)
        platforms.slow("webhook", 30)  # accept the post, then hold its reply until released
        outcome: list[object] = []

        def deliver() -> None:
            try:
                outcome.append(delivery.deliver(rt, batch, message_id="message-1"))
            except Exception as exc:  # what the worker thread would have hit, for the assertion
                outcome.append(exc)

        worker = threading.Thread(target=deliver)
        worker.start()
        wait_until(lambda: platforms.accepted("webhook"), 10, "the post reached the website")
        posting = rt.channel("pcc-website")
        assert isinstance(posting, WebhookChannel)
        main = project.config / "notifier.yaml"
        main.write_text(main.read_text() + "# edited while a post was on its way\n")
        rt.source.check(within=0)
        assert rt.channel("pcc-website") is not posting, "this thread saw the new config first"
        platforms.released.set()
        worker.join(30)

        assert outcome == [None], "every delivery of the batch is final"
        assert len(platforms.accepted("webhook")) == 1, "posted once"
        record = service.ledger.record(occurrence, "pcc-website", "*")
        assert record is not None and (record.status, record.attempts) == ("sent", 1), record
        assert record.provider_id and record.provider_id.startswith("wh-")
        assert posting._client.is_closed, "the old channel was closed once the post was done"
    finally:
        rt.close()
        service.close()


def test_a_post_on_a_closed_channel_is_deferred_and_nothing_is_posted(platforms: Platforms) -> None:
    account = Account(id="website", platform="webhook", url=f"{platforms.url}/hooks/website")
    channel = WebhookChannel(account, secret=SECRET)
    channel.close()
    at = datetime(2019, 7, 9, 8, 0, tzinfo=UTC)
    post = PostPayload("Have your say", "https://www.pcc.example/c", "c", "C", "opened", at, at, at)
    with pytest.raises(TransientDeliveryError, match="closed"):
        channel.send(Delivery("o", "website", "*"), post)
    assert platforms.seen("webhook") == []
