"""Up-front checks of everything a configured event will need, before anything is sent.

:func:`check` renders every template each configured event and channel will use, for this
consultation and its real audience, and reports every problem at once: a missing template,
a syntax error, a name outside the context, an unsafe attribute, a subject on two lines, a
post too long for its platform. Warnings (an account in outbox mode, one address with two
names) do not fail validation.
"""

from __future__ import annotations

from notifier import timeline
from notifier.audience import Recipient, resolve
from notifier.channels import limits
from notifier.channels.registry import is_outbox
from notifier.config import EMAIL_CHANNEL, Config, Consultation, Settings, token_variable
from notifier.errors import ConfigError, Problem
from notifier.rendering import EMAIL_NAMES, SOCIAL_NAMES, Renderer

SAMPLE_UNSUBSCRIBE = "https://notifier.example/unsubscribe/sample-token"


def check(config: Config, settings: Settings) -> list[Problem]:
    """Every problem and warning in ``config`` and its templates, in a stable order."""
    renderer = Renderer(config)
    found: dict[str, Problem] = {}

    def add(problems: list[Problem] | tuple[Problem, ...]) -> None:
        for problem in problems:
            found.setdefault(str(problem), problem)

    add(config.warnings)
    checked: set[str] = set()
    for consultation in config.consultations.values():
        for event in timeline.events(consultation, config.tz):
            add(check_event(config, renderer, consultation, event, checked=checked))
    for account in config.accounts.values():
        if is_outbox(account, settings):
            why = "outbox: true" if account.outbox else f"{token_variable(account.id)} is not set"
            add([account.where.warning(
                f"account {account.id!r} is in outbox mode ({why}): posts go to "
                f"{settings.data_dir}/outbox/social/{account.id}.jsonl"
            )])
    if not settings.public_url.startswith("https://"):
        add([Problem.warn("NOTIFIER_PUBLIC_URL", None,
                          f"{settings.public_url} is not https: mail providers ignore http List-Unsubscribe links")])
    return sorted(found.values(), key=lambda p: (p.severity != "error", p.path, p.line or 0))


def check_event(
    config: Config,
    renderer: Renderer,
    consultation: Consultation,
    event: timeline.Event,
    *,
    checked: set[str] | None = None,
) -> list[Problem]:
    """Problems rendering ``event`` on each of its channels for its real audience.

    ``checked`` collects template names whose names were already checked, so a template
    shared by several events is reported once.
    """
    checked = set() if checked is None else checked
    problems: list[Problem] = []
    audience = resolve(config.lists, event.audience)
    problems += [consultation.where.warning(w) for w in audience.warnings]
    if not audience.recipients and EMAIL_CHANNEL in event.channels:
        problems.append(consultation.where.warning(f"event {event.name!r} has nobody to e-mail"))
    context = renderer.context(consultation, event)
    for channel in event.channels:
        try:
            if channel == EMAIL_CHANNEL:
                name = renderer.email_template(event)
                if name not in checked:
                    checked.add(name)
                    problems += renderer.check_names(name, EMAIL_NAMES)
                for recipient in _samples(audience.recipients):
                    renderer.email(event, recipient, context=context, unsubscribe_url=SAMPLE_UNSUBSCRIBE)
                continue
            platform = config.accounts[channel].platform
            name = renderer.social_template(event, platform)
            if name not in checked:
                checked.add(name)
                problems += renderer.check_names(name, SOCIAL_NAMES)
            post = renderer.social(event, platform, context=context)
            too_long = limits.overflow(platform, post)
            if too_long:
                problems.append(
                    Problem.at(renderer.templates / name, None, f"the {event.name} post for {channel} is {too_long}")
                )
        except ConfigError as exc:
            problems += exc.problems
    return problems


def _samples(recipients: tuple[Recipient, ...]) -> list[Recipient]:
    """One recipient for each distinct shape of data (keys present, name or none)."""
    seen: dict[tuple[object, ...], Recipient] = {}
    for recipient in recipients:
        shape = (tuple(sorted(recipient.extra)), recipient.name is None, recipient.organisation is None)
        seen.setdefault(shape, recipient)
    return list(seen.values())
