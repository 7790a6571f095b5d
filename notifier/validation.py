"""Up-front checks of everything a configured event will need, before anything is sent.

:func:`check` renders every template each configured event and channel will use, for this
consultation and its real audience, and reports every problem at once: a missing template,
a syntax error, a name outside the context, an unsafe attribute, a subject on two lines, a
post too long for its platform. Warnings (an account in outbox mode, one address with two
names) do not fail validation.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from notifier import acknowledgement, timeline
from notifier.audience import Recipient, resolve
from notifier.channels import limits, registry
from notifier.channels.base import PostPayload
from notifier.channels.http import posted_text
from notifier.compose import compose
from notifier.config import Config, Consultation, Settings, load_partial, token_variable
from notifier.errors import ConfigError, Problem
from notifier.memo import ByIdentity
from notifier.rendering import EMAIL_NAMES, SOCIAL_NAMES, Renderer

SAMPLE_UNSUBSCRIBE = "https://notifier.example/unsubscribe/sample-token"


def load_and_check(settings: Settings) -> tuple[Config, list[Problem]]:
    """``notifier validate``: load the config directory as far as it will load, check the
    templates of whatever did, and return every problem and warning at once.

    The Config is complete only when no problem is an error. Raises ConfigError only when
    there is nothing to check (no config directory, no notifier.yaml).
    """
    config, problems = load_partial(settings.config_dir)
    return config, _in_order([*problems, *check(config, settings)])


def check(config: Config, settings: Settings) -> list[Problem]:
    """Every problem and warning in ``config`` and its templates, in a stable order."""
    renderer = Renderer(config, record_undefined=True)  # every undefined name at once, not the first
    found: list[Problem] = list(config.warnings)
    if config.templates.is_dir():  # else loading said so, and every template would be missing
        checked: dict[str, frozenset[str]] = {}
        samples: ByIdentity[list[Recipient]] = ByIdentity()
        for consultation in config.consultations.values():
            for event in timeline.events(consultation, config.tz):
                if event.name != acknowledgement.EVENT:  # acknowledgement.check's, with a sample response
                    found += check_event(config, renderer, consultation, event, checked=checked, samples=samples)
            found += _check_extension(config, renderer, consultation, checked=checked, samples=samples)
        found += acknowledgement.check(config, renderer)
    for account in config.accounts.values():
        if registry.is_outbox(account, settings):
            why = "outbox: true" if account.outbox else f"{token_variable(account.id)} is not set"
            found.append(
                account.where.warning(
                    f"account {account.id!r} is in outbox mode ({why}): posts go to "
                    f"{settings.data_dir}/outbox/social/{account.id}.jsonl"
                )
            )
    if not settings.public_url.startswith("https://"):
        found.append(
            Problem.warn(
                "NOTIFIER_PUBLIC_URL",
                None,
                f"{settings.public_url} is not https: mail providers ignore http List-Unsubscribe links",
            )
        )
    return _in_order(found)


def _check_extension(
    config: Config,
    renderer: Renderer,
    consultation: Consultation,
    *,
    checked: dict[str, frozenset[str]],
    samples: ByIdentity[list[Recipient]],
) -> list[Problem]:
    """The ``extended`` event's templates, which a deadline extension needs: checked when they
    exist (an ``extended`` in ``events`` is checked with the others); a warning when none does."""
    if timeline.EXTENDED in consultation.events or "opened" not in consultation.events:
        return []
    event = timeline.event(consultation, timeline.EXTENDED, config.tz)
    if renderer.find(consultation.id, event.name, "email.j2") is None:
        return [
            consultation.where.warning(
                f"no template for {timeline.EXTENDED!r} ({config.templates}/{timeline.EXTENDED}/): "
                "moving closes later after the consultation opened could not be announced"
            )
        ]
    return check_event(config, renderer, consultation, event, checked=checked, samples=samples)


def _in_order(problems: Iterable[Problem]) -> list[Problem]:
    """``problems`` without repeats, errors first, then by file and line."""
    unique = {str(problem): problem for problem in problems}
    return sorted(unique.values(), key=lambda p: (p.severity != "error", p.path, p.line or 0))


def check_event(  # noqa: PLR0913 - the event, what renders it, and keyword-only caches shared across events
    config: Config,
    renderer: Renderer,
    consultation: Consultation,
    event: timeline.Event,
    *,
    checked: dict[str, frozenset[str]] | None = None,
    samples: ByIdentity[list[Recipient]] | None = None,
) -> list[Problem]:
    """Problems rendering ``event`` on each of its channels for its real audience.

    ``checked`` maps the templates whose names were already checked to the unknown names
    found, so a template shared by several events is reported once, and a render that
    fails on a name already reported as unknown is not reported again. ``samples`` keeps
    the recipients chosen from each audience, so events that share one (the same resolved
    recipients) do not scan it again.
    """
    checked = {} if checked is None else checked
    problems: list[Problem] = []
    audience = resolve(config.lists, event.audience)
    problems += [consultation.where.warning(w) for w in audience.warnings]
    if not audience.recipients and any(registry.per_recipient(c) for c in event.channels):
        problems.append(consultation.where.warning(f"event {event.name!r} has nobody to e-mail"))
    context = renderer.context(consultation, event)
    for channel in event.channels:
        name = None
        try:
            if registry.per_recipient(channel):
                name = renderer.email_template(event)
                problems += _check_names(renderer, name, EMAIL_NAMES, checked)
                for recipient in _samples(audience.recipients, ByIdentity() if samples is None else samples):
                    compose(
                        renderer,
                        config,
                        consultation,
                        event,
                        channel,
                        recipient,
                        context=context,
                        unsubscribe_url=SAMPLE_UNSUBSCRIBE,
                    )
                continue
            platform = config.accounts[channel].platform
            name = renderer.social_template(event, platform)
            problems += _check_names(renderer, name, SOCIAL_NAMES, checked)
            post = compose(renderer, config, consultation, event, channel, context=context)
            assert isinstance(post, PostPayload)  # an account is addressed per account
            rules = registry.rules(platform)
            too_long = limits.overflow(rules, posted_text(rules, post))
            if too_long:
                problems.append(
                    Problem.at(renderer.templates / name, None, f"the {event.name} post for {channel} is {too_long}")
                )
        except ConfigError as exc:
            if name is not None:
                path, unknown = renderer.templates / name, checked.get(name, frozenset())
                problems += [p for p in exc.problems if not _repeats_unknown_name(p, path, unknown)]
            else:
                problems += exc.problems
    return problems


def _check_names(
    renderer: Renderer, name: str, allowed: frozenset[str], checked: dict[str, frozenset[str]]
) -> list[Problem]:
    """:meth:`Renderer.check_names` once per template; records its unknown names in ``checked``."""
    if name in checked:
        return []
    checked[name] = renderer.unknown_names(name, allowed)
    return renderer.check_names(name, allowed)


def _repeats_unknown_name(problem: Problem, template: Path, unknown: frozenset[str]) -> bool:
    """True for a render error in ``template`` on a name check_names already reported as
    unknown (Jinja says ``'consultaton' is undefined``; template_problem adds ``undefined:``)."""
    return problem.path == str(template) and any(
        problem.message == f"undefined: {name!r} is undefined" for name in unknown
    )


def _samples(recipients: tuple[Recipient, ...], memo: ByIdentity[list[Recipient]]) -> list[Recipient]:
    """One recipient for each distinct shape of data (keys present, name or none), the
    first of each shape; remembered in ``memo`` for these very recipients."""
    known = memo.get(recipients)
    if known is not None:
        return known
    seen: dict[tuple[object, ...], Recipient] = {}
    in_order: dict[tuple[str, ...], tuple[str, ...]] = {}  # a member's keys -> sorted (one sort per order)
    for recipient in recipients:
        keys = tuple(recipient.extra)
        ordered = in_order.get(keys)
        if ordered is None:
            ordered = in_order[keys] = tuple(sorted(keys))
        shape = (ordered, recipient.name is None, recipient.organisation is None)
        if shape not in seen:
            seen[shape] = recipient
    return memo.put(recipients, list(seen.values()))
