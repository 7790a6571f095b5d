"""Thanking each respondent, once: event ``response_received``, one occurrence per response.

An acknowledgement is a delivery like any other: it goes through the ledger (sent at most
once, the same Message-ID on every attempt, retried on transient failures) and the workers.
What makes it special is only its audience and context:

* its occurrence id is derived from the consultation and the response's identity (its
  ``reference``, or its address and ``received``: :func:`notifier.responses.response_key`),
  so importing a file twice, or recording one response by the API and again by an import,
  can never thank anyone twice;
* the respondent is its one recipient, by e-mail only (they need not be on any list), and
  the response (``email``, ``name``, ``organisation``, ``received``, ``reference``) is kept in
  the occurrence's hash in Redis, so a worker renders it without the database;
* once its e-mail is sent, the response is marked acknowledged in the consultation record
  (:func:`settle`, called by the ``deliver`` actor).

It is never scheduled: :meth:`notifier.service.Service.fire` refuses it, and ``validate``
checks its template (``templates/[<consultation>/]response_received/email.j2``) when one
exists, with a sample response.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from notifier import timeline
from notifier.audience import Recipient
from notifier.broker import NAMESPACE
from notifier.channels import registry
from notifier.config import Config
from notifier.errors import ConfigError, Problem, UnknownOccurrenceError
from notifier.ledger import SUCCEEDED, Ledger
from notifier.rendering import EMAIL_NAMES, Renderer
from notifier.responses import response_key

if TYPE_CHECKING:
    from notifier.store import Response, Store

log = logging.getLogger(__name__)

EVENT = timeline.RESPONSE_RECEIVED
#: The names an acknowledgement's template may use.
NAMES = EMAIL_NAMES | {"response"}
_FIELD = "response"  # the occurrence hash field holding the response
_SAMPLE_AT = datetime(2019, 8, 1, 14, 30, tzinfo=UTC)
_SAMPLE_RECIPIENT = Recipient(email="respondent@example.org", name="Sam Sample", organisation="Sample Organisation")
#: The response ``validate`` renders an acknowledgement with.
SAMPLE: dict[str, Any] = {
    "email": _SAMPLE_RECIPIENT.email,
    "name": _SAMPLE_RECIPIENT.name,
    "organisation": _SAMPLE_RECIPIENT.organisation,
    "received": _SAMPLE_AT,
    "reference": "R-0001",
}


def occurrence_id(consultation: str, response: Response) -> str:
    """The one occurrence that acknowledges ``response``: the same however often it is recorded."""
    key = response_key(response.email, response.received, response.reference)
    return f"{consultation}:{EVENT}:{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def request(ledger: Ledger, consultation: str, responses: Iterable[Response]) -> list[str]:
    """Start the acknowledgement of each response not yet acknowledged: the new occurrence ids
    (to enqueue ``fire`` for); one asked for before is not started again."""
    started = []
    now = datetime.now(UTC)
    for response in responses:
        found = occurrence_id(consultation, response)
        data = {
            "id": response.id,
            "email": response.email,
            "name": response.name,
            "organisation": response.organisation,
            "reference": response.reference,
            "received": response.received.isoformat() if response.received else None,
        }
        if ledger.claim_named_occurrence(
            found, consultation, EVENT, number=response.id, at=now, extra={_FIELD: json.dumps(data)}
        ):
            started.append(found)
    return started


def respondent(ledger: Ledger, occurrence: str, tz: tzinfo) -> tuple[Recipient, dict[str, Any]]:
    """The one recipient of an acknowledgement and its template's ``response``."""
    raw = ledger.occurrence_field(occurrence, _FIELD)
    if raw is None:
        raise UnknownOccurrenceError(f"{occurrence} has no response recorded with it")
    data = json.loads(raw)
    received = datetime.fromisoformat(data["received"]).astimezone(tz) if data.get("received") else None
    response = {
        "email": data["email"],
        "name": data.get("name"),
        "organisation": data.get("organisation"),
        "received": received,
        "reference": data.get("reference"),
    }
    return Recipient(email=data["email"], name=data.get("name"), organisation=data.get("organisation")), response


def response_id(ledger: Ledger, occurrence: str) -> int | None:
    """The record's id of the response an acknowledgement thanks, or None for another occurrence."""
    raw = ledger.occurrence_field(occurrence, _FIELD)
    return int(json.loads(raw)["id"]) if raw is not None else None


def settle(ledger: Ledger, store: Store | None, occurrence: str) -> None:
    """After a ``deliver`` of ``occurrence``: if it is an acknowledgement whose e-mail has gone
    (sent, or written to the outbox), mark its response acknowledged in the record, at the
    time it went. Not for rehearsals (their outbox is not the respondent's inbox)."""
    if store is None or ledger.ns != NAMESPACE or f":{EVENT}:" not in occurrence:
        return
    found = response_id(ledger, occurrence)
    record = next((r for r in ledger.records(occurrence) if registry.per_recipient(r.channel)), None)
    if found is None or record is None or record.status not in SUCCEEDED:
        return
    at = datetime.fromisoformat(record.sent_at) if record.sent_at else datetime.now(UTC)
    store.mark_acknowledged([found], at=at)
    log.info("response %d acknowledged (%s)", found, occurrence)


def ready(config: Config, consultation_id: str) -> None:
    """Raise :class:`ConfigError` unless ``consultation_id``'s acknowledgement has a template that
    renders: checked before any response is recorded, so none is left unthanked by a typo."""
    renderer = Renderer(config)
    consultation = config.consultation(consultation_id)
    if renderer.find(consultation.id, EVENT, "email.j2") is None:
        raise ConfigError(
            [
                Problem.at(
                    renderer.templates,
                    None,
                    f"no template email.j2 for {consultation.id}:{EVENT}: add {renderer.templates}/{EVENT}/email.j2 "
                    f"(the thank-you e-mail), or import with --no-acknowledge",
                )
            ]
        )
    one = config.model_copy(update={"consultations": {consultation.id: consultation}})
    errors = [p for p in check(one, renderer) if p.severity == "error"]
    if errors:
        raise ConfigError(errors)


def check(config: Config, renderer: Renderer) -> list[Problem]:
    """``validate``: each consultation's acknowledgement template, where one exists, rendered
    with a sample response; ``response_received`` configured as a scheduled event is an error."""
    problems: list[Problem] = []
    checked: set[str] = set()
    for consultation in config.consultations.values():
        if EVENT in consultation.events:
            problems.append(
                Problem.at(
                    consultation.where.path,
                    consultation.line("events", EVENT),
                    f"events: {EVENT!r} cannot be scheduled: it is sent to each respondent when their response "
                    "is recorded (notifier responses import, or the API)",
                )
            )
        event = timeline.event(consultation, EVENT, config.tz)
        name = renderer.find(consultation.id, EVENT, "email.j2")
        if name is None:
            continue
        if name not in checked:
            checked.add(name)
            problems += renderer.check_names(name, NAMES)
        unknown = {f"undefined: {n!r} is undefined" for n in renderer.unknown_names(name, NAMES)}
        context = {**renderer.context(consultation, event, at=_SAMPLE_AT), "response": SAMPLE}
        try:
            renderer.email(
                event, _SAMPLE_RECIPIENT, context=context, unsubscribe_url="https://notifier.example/u/sample"
            )
        except ConfigError as exc:  # less what check_names said already
            problems += [p for p in exc.problems if p.message not in unknown]
    return problems
