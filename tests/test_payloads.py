"""One way to build what is sent (:func:`notifier.compose.compose`), and one config source
per process (:class:`notifier.source.ConfigSource`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from notifier import timeline
from notifier.audience import Recipient
from notifier.channels import registry
from notifier.channels.base import Addressing, EmailPayload, PostPayload
from notifier.channels.email import MaildirChannel, SmtpChannel
from notifier.channels.outbox import OutboxChannel
from notifier.compose import compose
from notifier.config import Settings, load_config
from notifier.rendering import Renderer
from notifier.service import Service
from notifier.source import ConfigSource
from tests.conftest import Project

SOC = "soc-strategy-2019"
URL = "https://notify.pcc.example/unsubscribe/t"


def test_each_channel_class_says_how_it_is_addressed() -> None:
    assert SmtpChannel.addressing is MaildirChannel.addressing is Addressing.RECIPIENT
    assert OutboxChannel.addressing is Addressing.ACCOUNT
    assert all(cls.addressing is Addressing.ACCOUNT for cls in registry.CHANNELS.values())
    assert registry.per_recipient("email") and not registry.per_recipient("pcc-x")


def test_the_email_channel_gets_the_recipients_email_and_an_account_its_post(project: Project) -> None:
    config = load_config(project.config)
    renderer = Renderer(config)
    consultation = config.consultations[SOC]
    event = timeline.event(consultation, "opened", config.tz)
    context = renderer.context(consultation, event)
    zoe = Recipient("Zoe@x.example", "Zoë Ólafsdóttir")
    email = compose(renderer, config, consultation, event, "email", zoe, context=context, unsubscribe_url=URL)
    post = compose(renderer, config, consultation, event, "pcc-x", context=context)
    assert isinstance(email, EmailPayload) and email.to_email == "Zoe@x.example" and email.unsubscribe_url == URL
    assert "Zoë Ólafsdóttir" in email.content.text and URL in email.content.text
    assert isinstance(post, PostPayload) and post.consultation_id == SOC and post.event == "opened"
    with pytest.raises(ValueError, match="per recipient"):
        compose(renderer, config, consultation, event, "email", context=context)


def test_an_extra_context_name_reaches_the_email_template(project: Project) -> None:
    project.write(
        "templates/response_received/email.j2",
        "{% block subject %}Thank you, {{ recipient.name }}{% endblock %}"
        "{% block text %}We received: {{ response.summary }}{% endblock %}",
    )
    config = load_config(project.config)
    renderer = Renderer(config)
    consultation = config.consultations[SOC]
    event = timeline.event(consultation, "response_received", config.tz)
    context = renderer.context(consultation, event)
    payload = compose(
        renderer,
        config,
        consultation,
        event,
        "email",
        Recipient("a@x.example", "Ann"),
        context=context,
        unsubscribe_url=URL,
        extra={"response": {"summary": "our views on X"}},
    )
    assert isinstance(payload, EmailPayload)
    assert payload.content.subject == "Thank you, Ann"
    assert payload.content.text == "We received: our views on X\n"
    assert "response" not in context  # the event's context is shared by every delivery: left as it was


@pytest.fixture
def service(project: Project, redis_url: str) -> Iterator[Service]:
    project.env["NOTIFIER_REDIS_URL"] = redis_url
    made = Service(Settings.from_env(project.env))
    yield made
    made.close()


def test_a_send_loads_and_checks_the_config_once_for_the_service_and_its_runtime(service: Service) -> None:
    config = service.config()
    assert service.runtime.config is config
    assert service.config() is config
    assert service.source.generation == 1  # one load between them


def test_an_edited_template_reaches_the_workers_through_the_shared_source(project: Project) -> None:
    source = ConfigSource(Settings.from_env(project.env), every=3600)
    before = source.current()
    assert source.current() is before and source.generation == 1  # not looked at again within `every`
    project.write("templates/opened/x.j2", "Edited {{ consultation.title }}")
    assert source.current() is before  # still within `every`
    after = source.current(within=0)
    assert after is not before and source.generation == 2
