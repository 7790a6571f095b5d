"""The evidence pack of a consultation, from the database alone.

``notifier evidence`` writes ``deliveries.csv`` (a row per delivery), ``evidence.json`` (the
facts and the deliveries, as ``report --format json`` has them) and ``overview.html`` (a
printable page), and prints the overview paragraph: the facts a consultation report's
"Consultation overview" states: the period, each channel used with when it was first used and
its counts, the stakeholder lists told and how many on each, how many stakeholders were told
in all, failures and suppressions, responses received and acknowledged.

"Told" means an e-mail with status ``sent`` (accepted by the recipient's server); ``outbox``
deliveries (written to the outbox, not delivered) are counted under their own status.
"""

from __future__ import annotations

import csv
import json
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment

from notifier.columns import FIELDS, REPORT_COLUMNS
from notifier.config import EMAIL_CHANNEL
from notifier.errors import StoreError
from notifier.ledger import STATUSES

__all__ = ["CSV_FIELDS", "FIELDS", "Evidence", "build", "day", "overview", "write"]
from notifier.store import TOLD, ConsultationRecord, Count, Store, told_in

#: The columns of deliveries.csv: the report's, and the Message-ID the record adds.
CSV_FIELDS = REPORT_COLUMNS


@dataclass(frozen=True, slots=True)
class ChannelFacts:
    """One channel's deliveries across the consultation."""

    channel: str
    first_sent: datetime | None
    counts: dict[str, int]

    @property
    def sent(self) -> int:
        """Deliveries sent (e-mails accepted, posts published)."""
        return self.counts.get("sent", 0)

    @property
    def failed(self) -> int:
        """Deliveries that failed permanently."""
        return self.counts.get("failed", 0)

    def as_json(self) -> dict[str, Any]:
        """The channel's object in evidence.json."""
        return {
            "channel": self.channel,
            "first_sent": _iso(self.first_sent),
            **{status: self.counts.get(status, 0) for status in STATUSES},
            **{s: n for s, n in self.counts.items() if s not in STATUSES},
        }


@dataclass(frozen=True, slots=True)
class ListFacts:
    """A stakeholder list and how many of its members were told."""

    id: str
    name: str
    told: int


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything the pack states about one consultation."""

    consultation: ConsultationRecord
    channels: list[ChannelFacts]
    lists: list[ListFacts]
    told: int
    counts: list[Count]
    responses: list[dict[str, Any]]
    acknowledged: int
    deliveries: list[dict[str, Any]] = field(repr=False)

    @property
    def tz(self) -> ZoneInfo:
        """The consultation's timezone, in which the pack gives dates."""
        return ZoneInfo(self.consultation.timezone)

    def total(self, status: str) -> int:
        """Deliveries with ``status`` on every channel."""
        return sum(c.counts.get(status, 0) for c in self.channels)

    def as_json(self) -> dict[str, Any]:
        """evidence.json."""
        c = self.consultation
        return {
            "consultation": c.id,
            "title": c.title,
            "url": c.url,
            "timezone": c.timezone,
            "opens": _iso(c.opens),
            "closes": _iso(c.closes),
            "channels": [ch.as_json() for ch in self.channels],
            "lists": [{"id": lst.id, "name": lst.name, "told": lst.told} for lst in self.lists],
            "told": self.told,
            "failed": self.total("failed"),
            "suppressed": self.total("suppressed"),
            "responses": {"received": len(self.responses), "acknowledged": self.acknowledged},
            "summary": [
                {
                    "occurrence": n.occurrence,
                    "event": n.event,
                    "fired_at": _iso(n.fired_at),
                    "channel": n.channel,
                    "status": n.status,
                    "count": n.count,
                }
                for n in self.counts
            ],
            "overview": overview(self),
            "deliveries": self.deliveries,
            "pruned": c.pruned_at is not None,
        }


def build(store: Store, consultation_id: str) -> Evidence:
    """The evidence of ``consultation_id`` from ``store``; :class:`StoreError` if it holds no record of it."""
    consultation = store.consultation(consultation_id)
    if consultation is None:
        raise StoreError(
            f"the database holds no record of consultation {consultation_id!r} "
            "(it is recorded when one of its events fires or its responses are imported)"
        )
    counts = store.counts(consultation_id)
    rows: list[dict[str, Any]] = [
        dict(zip(REPORT_COLUMNS, row, strict=True)) for row in store.delivery_rows(consultation_id)
    ]
    if consultation.pruned_at is None:  # who was told, from the rows just read rather than again
        told, per_list = told_in(
            (r["recipient"], r["lists"]) for r in rows if r["channel"] == EMAIL_CHANNEL and r["status"] in TOLD
        )
    else:
        told, per_list = store.told(consultation_id)
    names = store.list_names()
    responses = [
        {
            "email": r.email,
            "name": r.name or "",
            "organisation": r.organisation or "",
            "received": _iso(r.received),
            "reference": r.reference or "",
            "acknowledged": _iso(r.acknowledged_at),
        }
        for r in store.responses(consultation_id)
    ]
    return Evidence(
        consultation=consultation,
        channels=_channels(counts),
        lists=sorted((ListFacts(k, names.get(k) or k, n) for k, n in per_list.items()), key=lambda x: x.name.lower()),
        told=told,
        counts=counts,
        responses=responses,
        acknowledged=sum(bool(r["acknowledged"]) for r in responses),
        deliveries=rows,
    )


def _channels(counts: Iterable[Count]) -> list[ChannelFacts]:
    """Channels in the order first used (e-mail first on a tie), each with its status counts."""
    totals: dict[str, dict[str, int]] = {}
    first: dict[str, datetime | None] = {}
    for n in counts:
        totals.setdefault(n.channel, {})
        totals[n.channel][n.status] = totals[n.channel].get(n.status, 0) + n.count
        first.setdefault(n.channel, None)
        if n.status == "sent" and n.first_at is not None:
            old = first[n.channel]
            first[n.channel] = n.first_at if old is None else min(old, n.first_at)
    facts = [ChannelFacts(ch, first[ch], totals[ch]) for ch in totals]
    never = datetime.max.replace(tzinfo=ZoneInfo("UTC"))
    return sorted(facts, key=lambda f: (f.first_sent or never, f.channel != EMAIL_CHANNEL, f.channel))


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------
# The overview paragraph
# ---------------------------------------------------------------------------


def day(moment: datetime, tz: ZoneInfo) -> str:
    """``9 July 2019``: a date as a report states it, in the consultation's timezone."""
    local = moment.astimezone(tz)
    return f"{local.day} {local:%B %Y}"


def _period(evidence: Evidence) -> str:
    c = evidence.consultation
    if c.opens is None or c.closes is None:
        return f"The {c.title} consultation"
    days = (c.closes.astimezone(evidence.tz).date() - c.opens.astimezone(evidence.tz).date()).days
    weeks, rest = divmod(days, 7)
    length = (
        " and ".join(p for p in (_plural(weeks, "week") if weeks else "", _plural(rest, "day") if rest else "") if p)
        or "less than a day"
    )
    return (
        f"The {c.title} consultation was open from {day(c.opens, evidence.tz)} "
        f"to {day(c.closes, evidence.tz)} ({length})"
    )


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {words or word + 's'}"


def _channel_phrase(ch: ChannelFacts, tz: ZoneInfo) -> str:
    name = "e-mail" if ch.channel == EMAIL_CHANNEL else ch.channel
    when = f"first sent {day(ch.first_sent, tz)}" if ch.first_sent else "nothing sent"
    extra = "".join(f", {ch.counts[s]:,} {s}" for s in ("outbox", "failed", "bounced") if ch.counts.get(s))
    return f"{name} ({when}: {ch.sent:,} sent{extra})"


def _series(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def overview(evidence: Evidence) -> str:
    """The consultation overview paragraph, in plain English."""
    tz = evidence.tz
    parts = [_period(evidence) + "."]
    if evidence.channels:
        parts.append(f"It was publicised by {_series([_channel_phrase(ch, tz) for ch in evidence.channels])}.")
    else:
        parts.append("Nothing was sent about it.")
    if evidence.lists:
        told = [f"{lst.name} ({lst.told:,})" for lst in evidence.lists]
        parts.append(f"E-mails went to {_plural(len(told), 'stakeholder list')}: {_series(told)}.")
    parts.append(f"{_plural(evidence.told, 'stakeholder')} {'was' if evidence.told == 1 else 'were'} told in all.")
    failed, suppressed = evidence.total("failed"), evidence.total("suppressed")
    parts.append(
        f"{_plural(failed, 'delivery', 'deliveries')} failed and {suppressed:,} "
        f"{'was' if suppressed == 1 else 'were'} not sent to suppressed addresses."
    )
    bounced = evidence.total("bounced")
    if bounced:
        parts.append(f"{_plural(bounced, 'e-mail')} bounced after sending; those addresses are suppressed.")
    received = len(evidence.responses)
    parts.append(
        f"{_plural(received, 'response')} {'was' if received == 1 else 'were'} received and "
        f"{_plural(evidence.acknowledged, 'acknowledgement')} sent."
    )
    return " ".join(parts)


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

_HTML = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string("""\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ c.title }}: consultation evidence</title>
<style>
body { font: 11pt/1.45 Arial, Helvetica, sans-serif; color: #0b0c0c; }
body { max-width: 60em; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: 0 0 2em; width: 100%; }
caption { text-align: left; font-weight: bold; padding: .4em 0; }
th, td { border: 1px solid #b1b4b6; padding: .3em .5em; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #f3f2f1; }
@media print { body { margin: 0; max-width: none; } tr { page-break-inside: avoid; } }
</style>
</head>
<body>
<main>
<h1>{{ c.title }}: consultation evidence</h1>
<p>Consultation <code>{{ c.id }}</code>{% if c.url %}, <a href="{{ c.url }}">{{ c.url }}</a>{% endif %}.
Produced from the consultation record on {{ generated }}.{% if c.pruned_at %} Delivery rows were pruned
on {{ day(c.pruned_at) }} under the retention policy; the counts were kept.{% endif %}</p>
<h2>Overview</h2>
<p>{{ overview }}</p>
<h2>Channels</h2>
<table>
<caption>Deliveries by channel</caption>
<thead><tr><th scope="col">Channel</th><th scope="col">First sent</th>
{% for s in statuses %}<th scope="col">{{ s|capitalize }}</th>{% endfor %}</tr></thead>
<tbody>
{% for ch in e.channels %}
<tr><th scope="row">{{ "e-mail" if ch.channel == "email" else ch.channel }}</th>
<td>{{ day(ch.first_sent) if ch.first_sent else "not sent" }}</td>
{% for s in statuses %}<td class="n">{{ "{:,}".format(ch.counts.get(s, 0)) }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
<h2>Stakeholder lists</h2>
<table>
<caption>Stakeholders told on each list ({{ "{:,}".format(e.told) }} in all)</caption>
<thead><tr><th scope="col">List</th><th scope="col">Told</th></tr></thead>
<tbody>
{% for lst in e.lists %}
<tr><th scope="row">{{ lst.name }}</th><td class="n">{{ "{:,}".format(lst.told) }}</td></tr>
{% endfor %}
</tbody>
</table>
<h2>Events</h2>
<table>
<caption>Deliveries by event occurrence, channel and status</caption>
<thead><tr><th scope="col">Occurrence</th><th scope="col">Fired</th><th scope="col">Channel</th>
<th scope="col">Status</th><th scope="col">Count</th></tr></thead>
<tbody>
{% for n in e.counts %}
<tr><th scope="row">{{ n.occurrence }}</th><td>{{ day(n.fired_at) }}</td><td>{{ n.channel }}</td>
<td>{{ n.status }}</td><td class="n">{{ "{:,}".format(n.count) }}</td></tr>
{% endfor %}
</tbody>
</table>
<h2>Responses</h2>
<table>
<caption>Responses received ({{ e.responses|length }}; {{ e.acknowledged }} acknowledged)</caption>
<thead><tr><th scope="col">Respondent</th><th scope="col">Organisation</th><th scope="col">Received</th>
<th scope="col">Reference</th><th scope="col">Acknowledged</th></tr></thead>
<tbody>
{% for r in e.responses %}
<tr><th scope="row">{{ r.name or r.email }}</th><td>{{ r.organisation }}</td><td>{{ r.received or "" }}</td>
<td>{{ r.reference }}</td><td>{{ r.acknowledged or "no" }}</td></tr>
{% endfor %}
</tbody>
</table>
<h2>Failed deliveries</h2>
<table>
<caption>Deliveries that failed permanently ({{ failed|length }})</caption>
<thead><tr><th scope="col">Recipient</th><th scope="col">Event</th><th scope="col">Channel</th>
<th scope="col">Last error</th></tr></thead>
<tbody>
{% for d in failed %}
<tr><th scope="row">{{ d.recipient }}</th><td>{{ d.event }}</td><td>{{ d.channel }}</td><td>{{ d.last_error }}</td></tr>
{% endfor %}
</tbody>
</table>
</main>
</body>
</html>
""")


def write(evidence: Evidence, folder: Path, *, generated: datetime) -> list[Path]:
    """Write deliveries.csv, evidence.json and overview.html into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path, html_path = folder / "deliveries.csv", folder / "evidence.json", folder / "overview.html"
    with csv_path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        writer.writerows(map(operator.itemgetter(*CSV_FIELDS), evidence.deliveries))
    document = {**evidence.as_json(), "generated_at": _iso(generated)}
    rows = document.pop("deliveries")
    # The facts indented for reading, then one delivery a line: json.dumps without indent is
    # the C encoder (json.dump and indent are pure Python, 5x slower for 100,000 deliveries).
    facts = json.dumps(document, ensure_ascii=False, indent=1)
    encode = json.JSONEncoder(ensure_ascii=False).encode
    with json_path.open("w", encoding="utf-8") as f:
        f.write(facts[:-2])
        f.write(',\n "deliveries": [\n  ' if rows else ',\n "deliveries": [')
        f.write(",\n  ".join(map(encode, rows)))
        f.write("\n ]\n}\n" if rows else "]\n}\n")
    html_path.write_text(
        _HTML.render(
            c=evidence.consultation,
            e=evidence,
            overview=overview(evidence),
            statuses=STATUSES,
            failed=[d for d in evidence.deliveries if d["status"] == "failed"],
            generated=day(generated, evidence.tz),
            day=lambda m: day(m, evidence.tz),
        ),
        encoding="utf-8",
    )
    return [csv_path, json_path, html_path]
