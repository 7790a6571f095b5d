"""The ``notifier`` command: check, preview, send, report, and run the service.

Exit codes (the contract): 0 success; 1 invalid input or configuration, with every problem
printed as ``PATH:LINE: message``; 2 when deliveries failed permanently.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from notifier import __version__, agenda, archive, extension, timeline
from notifier import preview as previewing
from notifier import report as reporting
from notifier.audience import resolve
from notifier.bounce_cli import bounces
from notifier.broker import connect
from notifier.channels import registry
from notifier.compose import compose
from notifier.config import Config, Settings, load_config
from notifier.delivery import ACCOUNT
from notifier.errors import ConfigError, EmbeddedDataError, NotifierError, Problem, UsageError
from notifier.ledger import STATUSES, SUCCEEDED, Ledger, Record
from notifier.memo import no_collection_at_exit
from notifier.moments import normalise
from notifier.record_cli import check_schema, db, evidence, responses
from notifier.rehearsal import rehearse as run_rehearsal
from notifier.rendering import Renderer
from notifier.responders import Responders, responders
from notifier.scheduler import offset_clock, serve
from notifier.service import Service
from notifier.store import Store
from notifier.users_cli import users
from notifier.validation import check, load_and_check

# emoji=False: text from templates and config is printed as it is (``:x:`` stays ``:x:``); every
# print of such text also passes markup=False, so ``[red]`` is not taken for a style either.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

EXIT_OK, EXIT_INVALID, EXIT_FAILED = 0, 1, 2
WIDE_REPORT = 160  # columns: below this, report leaves lists and provider ids to csv and json


def _settings() -> Settings:
    return Settings.from_env()


def _problems(problems: Iterable[Problem]) -> None:
    for problem in problems:
        style = "yellow" if problem.severity == "warning" else "red"
        err.print(str(problem), style=style, markup=False)


def _load(settings: Settings) -> Config:
    return load_config(settings.config_dir)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="notifier")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (to stderr).")
def cli(verbose: bool) -> None:
    """Tell a consultation's stakeholders what they need to know, once, on time.

    Settings come from NOTIFIER_* environment variables (see README).
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    check_schema(_settings(), click.get_current_context().invoked_subcommand)


def _service_logging() -> None:
    """Long-running commands say what they do (fired, scheduled, deferred) without -v."""
    logging.getLogger("notifier").setLevel(logging.INFO)


# ---------------------------------------------------------------------------
# validate / plan / preview
# ---------------------------------------------------------------------------


@cli.command()
def validate() -> None:
    """Check config, lists and every template the configured events need."""
    settings = _settings()
    config, problems = load_and_check(settings)
    if not any(p.severity == "error" for p in problems):
        problems += _deadline_problems(settings, config)
    _problems(problems)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        err.print(f"{len(errors)} error(s): nothing can be sent until they are fixed.", style="bold red")
        sys.exit(EXIT_INVALID)
    people = {m.email.lower() for lst in config.lists.values() for m in lst.members}
    out.print(
        f"[green]OK[/]: {len(config.consultations)} consultation(s), {len(config.lists)} list(s), "
        f"{len(people)} stakeholder(s), {len(config.accounts)} account(s)"
        + (f"; {len(problems)} warning(s)" if problems else "")
    )


def _deadline_problems(settings: Settings, config: Config) -> list[Problem]:
    """A ``closes`` moved earlier than announced, or after ``closed`` fired (:mod:`notifier.extension`),
    where there is a ledger to ask: an external Redis, or a data dir something has run in."""
    if not settings.redis_url and not settings.data_dir.exists():
        return []
    try:
        return extension.problems(Ledger(connect(settings)), config)
    except NotifierError as exc:
        return [Problem.warn("NOTIFIER_REDIS_URL", None, f"deadline changes not checked: state unknown ({exc})")]


def _ledger_or_none(settings: Settings) -> Ledger | None:
    try:
        return Ledger(connect(settings))
    except EmbeddedDataError:
        raise  # the state is known to be unreadable, not unknown: stop
    except NotifierError as exc:
        err.print(f"note: state unknown ({exc})", style="yellow")
        return None


@cli.command()
@click.argument("consultation", required=False)
def plan(consultation: str | None) -> None:
    """The timeline: when each event fires, to how many, on which channels, and its state."""
    settings = _settings()
    config = _load(settings)
    consultations = [config.consultation(consultation)] if consultation else list(config.consultations.values())
    ledger = _ledger_or_none(settings)
    if ledger:
        _restore(settings, ledger, [c.id for c in consultations])
    suppressed = ledger.suppressed() if ledger else {}
    now = datetime.now(UTC)
    agendas = [
        agenda.agenda(
            config, item, ledger, suppressed, lambda c: _responders(settings, c, config), now, grace=settings.grace
        )
        for item in consultations
    ]
    out.print(_plan_table(agendas, config))


def _plan_table(agendas: list[agenda.Agenda], config: Config) -> Table:
    """The agendas as one table; one consultation is named in the title, leaving its column's
    width to the others."""
    single = agendas[0].consultation.id if len(agendas) == 1 else None
    title = f"{single}: timeline" if single else "Timeline"
    table = Table(title=f"{title} ({config.timezone})", title_justify="left")
    columns = ["When", "Event", "Channels", "Audience", "State"]
    paced = any(item.paced for item in agendas)
    if paced:
        columns.insert(4, "Finishes")
    if not single:
        columns.insert(1, "Consultation")
    for column in columns:
        table.add_column(column, no_wrap=column in ("When", "Event"), overflow="fold")
    for item in agendas:
        for row in item.events:
            when = row.when if row.configured is None else f"{row.when}\nset for {row.configured}:\n{row.moved_because}"
            notes = f" ({', '.join(row.notes)})" if row.notes else ""
            state = agenda.describe(row.status, config, by_hand="`notifier send`")
            cells = [when, row.event.name, ", ".join(row.event.channels), f"{row.audience}{notes}", state]
            if paced:
                cells.insert(4, row.finishes)
            table.add_row(*(cells if single else [*cells[:1], item.consultation.id, *cells[1:]]))
    return table


def _restore(settings: Settings, ledger: Any, consultations: list[str]) -> None:
    """Put back into Redis what the record says fired and Redis has lost (a FLUSHALL), and
    the suppressions, so that `plan` shows them."""
    store = Store.open(settings)
    try:
        for consultation in consultations:
            archive.restore(ledger, store, consultation)
        archive.seed_suppressions(ledger, store)
    finally:
        store.close()


def _responders(settings: Settings, consultation: str, config: Config) -> Responders | None:
    """Who responded to ``consultation``, for an event's ``skip``; None (and a note) when the
    record cannot be read."""
    try:
        store = Store.open(settings)
        try:
            return responders(store, consultation, config.tz)
        finally:
            store.close()
    except NotifierError as exc:
        err.print(f"note: responses unknown, audiences shown before skipping ({exc})", style="yellow", markup=False)
        return None


def _preview_key(settings: Settings) -> bytes | None:
    if settings.secret_key_env:
        return settings.secret_key_env.encode()
    path = settings.data_dir / "secret.key"
    return path.read_text().strip().encode() if path.exists() else None


@cli.command()
@click.argument("consultation")
@click.argument("event")
@click.option("--channel", "channel", help="Only this channel (email or an account id).")
@click.option("--to", "to", help="Render the e-mail for this stakeholder (default: the first).")
def preview(consultation: str, event: str, channel: str | None, to: str | None) -> None:
    """Render exactly what would be sent, without sending or recording anything."""
    settings = _settings()
    config = _load(settings)
    item = config.consultation(consultation)
    ev = timeline.event(item, event, config.tz)
    key = _preview_key(settings)
    for found in previewing.previews(settings, config, item, ev, key, to, [channel] if channel else None):
        if isinstance(found, previewing.EmailPreview):
            _print_email(found)
        else:
            size = f"{found.length}/{found.limit}" if found.limit else f"{len(found.text)} characters"
            out.rule(f"{found.channel} ({found.platform}, {size})")
            out.print(found.text, markup=False)
            out.print()


def _print_email(found: previewing.EmailPreview) -> None:
    out.rule("email")
    for name, value in found.headers:
        out.print(f"{name}: {value}", markup=False)
    for kind, body in found.parts:
        out.rule(kind)
        out.print(body.rstrip(), markup=False)
    out.print()


# ---------------------------------------------------------------------------
# send / worker / report
# ---------------------------------------------------------------------------


@cli.command()
@click.argument("consultation")
@click.argument("event")
@click.option("--wait", is_flag=True, help="Block until every delivery is final and print a summary.")
@click.option("--dry-run", is_flag=True, help="Resolve and render everything; send nothing.")
@click.option("--again", is_flag=True, help="Fire an event that already fired (a new occurrence).")
@click.option("--early", is_flag=True, help="Fire a scheduled event before its time (it then does not go at its time).")
def send(consultation: str, event: str, wait: bool, dry_run: bool, again: bool, early: bool) -> None:  # noqa: PLR0913 - click passes one argument per option
    """Fire an event now, through the same path the scheduler uses. Warnings are printed
    and do not stop it; a scheduled event before its time needs --early."""
    settings = _settings()
    if dry_run:
        _dry_run(settings, consultation, event)
        return
    service = Service(settings)
    try:
        occurrence_id = service.fire(consultation, event, again=again, early=early, warn=lambda p: _problems([p]))
        if occurrence_id is None:
            fired = service.ledger.fired(consultation, event)
            out.print(
                f"{consultation} {event} already fired ({fired}); nothing sent. Use --again for a new occurrence."
            )
            if not wait or fired is None:
                return
            occurrence_id = fired  # only waited for: the process that fired it queued the fan-out
        else:
            out.print(f"fired {occurrence_id}")
        _deliver(service, occurrence_id, wait=wait)
    finally:
        service.close()


#: Seconds between progress lines of ``send --wait`` when stderr is not a terminal.
PROGRESS_EVERY_S = 5.0


def _progress_lines() -> Any:
    """An ``on_progress`` for a log or a pipe, where a bar would be noise or nothing: a line
    with the counts by status at the start, every :data:`PROGRESS_EVERY_S`, and at the end."""
    first, last = time.monotonic(), -PROGRESS_EVERY_S

    def update(p: Any) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < PROGRESS_EVERY_S and not p.finished:
            return
        last = now
        by_status: dict[str, int] = {}
        for counts in p.counts.values():
            for status, n in counts.items():
                by_status[status] = by_status.get(status, 0) + n
        detail = ", ".join(f"{status} {by_status[status]}" for status in sorted(by_status)) or "none recorded yet"
        err.print(f"delivering: {p.done} of {p.total} final ({detail}) after {now - first:.0f} s", markup=False)

    return update


@cli.command()
@click.argument("consultation")
@click.argument("event")
@click.option("--wait", is_flag=True, help="Block until every delivery is final and print a summary.")
def retry(consultation: str, event: str, wait: bool) -> None:
    """Put the failed deliveries of the event's latest occurrence back to pending (same
    Message-ID) and deliver only those."""
    service = Service(_settings())
    try:
        occurrence_id, count = service.retry(consultation, event)
        if not count:
            out.print(f"{occurrence_id} has no failed deliveries; nothing to retry.")
            return
        out.print(f"retrying {count} failed deliver{'y' if count == 1 else 'ies'} of {occurrence_id}")
        _deliver(service, occurrence_id, wait=wait)
    finally:
        service.close()


def _deliver(service: Any, occurrence_id: str, *, wait: bool) -> None:
    """After queueing: without ``wait``, a note if no worker will pick it up; with it, wait
    (delivering in this process if no worker is alive), print the summary, exit 2 on failures."""
    alive = service.workers_alive()
    if not wait:
        if not alive:
            err.print(
                "note: no worker is running; deliveries wait in the queue until "
                "`notifier worker` (or `notifier run`) starts. Use --wait to deliver now.",
                style="yellow",
            )
        return
    if alive:
        progress = _wait_with_bar(service, occurrence_id)
    else:
        out.print("no worker is running: delivering in this process")
        with service.worker():
            progress = _wait_with_bar(service, occurrence_id)
    service.archive(occurrence_id)  # the record holds every outcome when the command returns
    _summary(service.ledger.records(occurrence_id))
    if progress.failed:
        sys.exit(EXIT_FAILED)


def _wait_with_bar(service: Any, occurrence_id: str) -> Any:
    if not err.is_terminal:
        return service.wait(occurrence_id, on_progress=_progress_lines())
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("delivering", total=None)

        def update(p: Any) -> None:
            bar.update(task, total=max(p.total, 1), completed=p.done)

        return service.wait(occurrence_id, on_progress=update)


def _summary(records: list[Record]) -> None:
    table = Table(title="Deliveries", title_justify="left")
    statuses = STATUSES
    table.add_column("Channel")
    for status in statuses:
        table.add_column(status, justify="right")
    by_channel: dict[str, dict[str, int]] = {}
    for record in records:
        counts = by_channel.setdefault(record.channel, {})
        counts[record.status] = counts.get(record.status, 0) + 1
    for channel, counts in sorted(by_channel.items()):
        table.add_row(channel, *(str(counts.get(s, 0)) for s in statuses))
    out.print(table)
    for record in records:
        if record.status == "failed":
            err.print(f"failed: {record.channel} {record.recipient}: {record.error}", style="red", markup=False)


def _dry_run(settings: Settings, consultation: str, event: str) -> None:
    config = _load(settings)
    problems = [p for p in check(config, settings) if p.severity == "error"]
    if problems:
        raise ConfigError(problems)
    item = config.consultation(consultation)
    ev = timeline.event(item, event, config.tz)
    ledger = _ledger_or_none(settings)
    audience = resolve(config.lists, ev.audience, suppressed=ledger.suppressed() if ledger else {})
    renderer = Renderer(config)
    context = renderer.context(item, ev)
    url = f"{settings.public_url}/unsubscribe/<token>"
    rendered = 0
    for name in ev.channels:
        for recipient in audience.recipients if registry.per_recipient(name) else (None,):
            compose(renderer, config, item, ev, name, recipient, context=context, unsubscribe_url=url)
            rendered += 1
    fired = ledger.fired(consultation, event) if ledger else None
    out.print(
        f"dry run: {item.id} {event} would send {rendered} message(s) on {', '.join(ev.channels)} "
        f"to {len(audience)} recipient(s) ({len(audience.suppressed)} suppressed); nothing sent."
    )
    if fired:
        out.print(f"note: it already fired ({fired}); a real send needs --again.")


def _stop_on(signals: Iterable[signal.Signals], stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        stop.set()

    for sig in signals:
        signal.signal(sig, handler)


@cli.command()
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1, 64), help="Worker processes.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256), help="Threads per process.")
def worker(processes: int, threads: int) -> None:
    """Dramatiq workers that deliver. Stop cleanly on SIGTERM or Ctrl-C."""
    _service_logging()
    if processes > 1:
        _supervise(processes, threads)
        return
    settings = _settings()
    service = Service(settings)
    stop = threading.Event()
    _stop_on((signal.SIGTERM, signal.SIGINT), stop)
    err.print(f"worker {service.runtime.worker_id} started ({threads} threads)")
    try:
        with service.worker(threads=threads):
            stop.wait()
            err.print("stopping: finishing in-flight deliveries")
    finally:
        service.close()


def _supervise(processes: int, threads: int) -> None:
    command = [sys.executable, "-m", "notifier", "worker", "--processes", "1", "--threads", str(threads)]
    children = [subprocess.Popen(command) for _ in range(processes)]

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    sys.exit(max(codes))


@cli.command()
@click.argument("consultation")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--event", "event", help="Only this event.")
def report(consultation: str, fmt: str, event: str | None) -> None:
    """The delivery ledger: counts per event and channel, and a row per delivery."""
    settings = _settings()
    config = _load(settings)
    config.consultation(consultation)
    store = Store.open(settings)  # what Redis has lost (a FLUSHALL) is read from the record
    try:
        found = reporting.build(Ledger(connect(settings)), consultation, event=event, tz=config.tz, store=store)
    finally:
        store.close()
    if fmt == "json":
        click.echo(json.dumps(found.as_json(), indent=2))
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=reporting.FIELDS)
        writer.writeheader()
        writer.writerows(found.deliveries)
        click.echo(buffer.getvalue(), nl=False)
    else:
        _report_tables(consultation, found.summary, found.deliveries, zone=str(config.tz))
    if found.failed:
        sys.exit(EXIT_FAILED)


def _when(iso: str) -> str:
    """A report time (ISO, already in the configured zone) to the minute: ``29 Nov 2026 19:23``."""
    return f"{datetime.fromisoformat(iso):%d %b %Y %H:%M}" if iso else ""


def _report_tables(consultation: str, summary: list[dict[str, Any]], rows: list[dict[str, Any]], *, zone: str) -> None:
    """The report as tables: deliveries by event and channel, then one row per delivery.

    Every column fits a wide terminal; a narrow one gets what says who was told what and
    when, and a pointer to the rest (the csv and json formats always carry every field).
    """
    if not summary:
        out.print(f"{consultation}: nothing has been sent yet.")
        return
    wide = out.width >= WIDE_REPORT

    def short(occurrence: str) -> str:  # the title names the consultation: "opened:1" is enough
        return occurrence.removeprefix(f"{consultation}:")

    out.print(_summary_table(consultation, summary, short, zone=zone))
    out.print(_detail_table(rows, short, wide=wide))
    if not wide:
        out.print("(more in a wider terminal; --format csv or json gives every field)")


def _summary_table(
    consultation: str, summary: list[dict[str, Any]], short: Callable[[str], str], *, zone: str
) -> Table:
    """Deliveries counted by occurrence, channel and status."""
    table = Table(title=f"{consultation}: deliveries by event and channel (times {zone})", title_justify="left")
    # The statuses that occur, in the usual order: all five do not fit 80 columns beside the rest.
    statuses = [s for s in STATUSES if any(row.get(s) for row in summary)]
    for column in ("Occurrence", "Fired", "Channel", *statuses):
        # In 80 columns a long account id folds onto a second line; no header or count is cut.
        table.add_column(
            column,
            justify="right" if column in statuses else "left",
            overflow="fold",
            no_wrap=column in ("Occurrence", "Fired"),
            min_width=len(column) if column in statuses else None,
        )
    for s in summary:
        table.add_row(
            short(s["occurrence"]),
            _when(s["fired_at"]) + (" late" if s["late"] else ""),
            s["channel"],
            *(str(s.get(k, 0)) for k in statuses),
        )
    return table


_WIDE_COLUMNS = ["Occurrence", "Channel", "Recipient", "Lists", "Status", "Tries", "Sent", "Last error", "Provider id"]


def _detail_table(rows: list[dict[str, Any]], short: Callable[[str], str], *, wide: bool) -> Table:
    """One row per delivery; in 80 columns, "To" is the address an e-mail went to, or the
    account a post went on."""
    if wide:
        columns = _WIDE_COLUMNS
    else:
        several = len({r["occurrence"] for r in rows}) > 1
        columns = [*(["Occurrence"] if several else []), "To", "Status", "Sent", "Last error"]
    detail = Table(title="Deliveries", title_justify="left")
    # Rich shrinks the widest column first, so the error column is capped at what is left
    # once the address has 28 and the fixed ones theirs: the table then fits the terminal.
    fixed = {
        "Occurrence": max([len("Occurrence")] + [len(short(r["occurrence"])) for r in rows]),
        "Status": 10,
        "Sent": 17,
    }
    left = out.width - 28 - sum(fixed.get(c, 0) for c in columns) - 3 * len(columns) - 1
    to = 28
    if not wide and left < 12:  # no room for the time on one line: the date over the time
        fixed["Sent"], left = 11, left + 6
    if not wide and left < 12:  # still none (an Occurrence column too): the address folds sooner
        to, left = to - (12 - left), 12
    for column in columns:
        detail.add_column(
            column,
            overflow="fold",
            no_wrap=column in fixed and column != "Sent",
            width=fixed["Sent"] if column == "Sent" and not wide else None,
            min_width=to if column in ("Recipient", "To") else None,
            max_width=max(left, 12) if column == "Last error" and not wide else None,
        )
    for r in rows:
        cells = {
            "Occurrence": short(r["occurrence"]),
            "Channel": r["channel"],
            "Recipient": r["recipient"],
            "To": r["channel"] if r["recipient"] == ACCOUNT else r["recipient"],
            "Lists": r["lists"],
            "Status": r["status"],
            "Tries": str(r["attempts"]),
            "Sent": _when(r["sent_at"]),
            "Last error": r["last_error"],
            "Provider id": r["provider_id"],
        }
        detail.add_row(*(cells[c] for c in columns))
    return detail


@cli.command()
def web() -> None:
    """The HTTP service: unsubscribe pages, health and metrics, on NOTIFIER_WEB_BIND."""
    _service_logging()
    # Imported here, not at the top, for the start-up time of every other command: Starlette,
    # uvicorn and h11 are a tenth of what `notifier validate` or `plan` spends importing.
    from notifier.web import make_server

    settings = _settings()
    server = make_server(settings)

    def stop(signum: int, frame: Any) -> None:
        server.should_exit = True

    # Until the server takes SIGTERM and Ctrl-C over (and after: it raises them again once it
    # has stopped), they stop it too, so the command always ends normally (exit 0, the embedded
    # Redis released) rather than killed.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    err.print(f"web listening on http://{settings.web_bind} (links in e-mails use {settings.public_url})")
    server.run()


@cli.command()
def scheduler() -> None:
    """Fire scheduled events on time; with several running, only the leader fires."""
    _service_logging()
    settings = _settings()
    stop = threading.Event()
    _stop_on((signal.SIGTERM, signal.SIGINT), stop)
    err.print("scheduler started (SIGHUP or an edited file reloads the config)")
    serve(settings, stop=stop)
    err.print("scheduler stopped")


@cli.command()
@click.option(
    "--threads",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Delivery threads of the in-process worker.",
)
@click.option(
    "--now",
    "now",
    metavar="'YYYY-MM-DD HH:MM'",
    help="Start the clock at this local time (it then runs on in real time): replays a "
    "past timeline live. For trials only, never on a real ledger.",
)
def run(threads: int, now: str | None) -> None:
    """Scheduler, worker and web together on one machine (embedded Redis unless NOTIFIER_REDIS_URL)."""
    _service_logging()
    from notifier.web import make_server  # start-up time: see web()

    settings = _settings()
    service = Service(settings)
    try:
        config = service.source.current()  # the process' one load, shared with the worker and scheduler
        clock = offset_clock(_parse_now(now, config)) if now else None
    except BaseException:
        service.close()
        raise
    stop = threading.Event()
    _stop_on((signal.SIGTERM, signal.SIGINT), stop)
    web_server = make_server(settings, service=service)  # one Service in the process, shared
    web_thread = threading.Thread(target=web_server.run, name="notifier-web", daemon=True)
    try:
        with service.worker(threads=threads):
            web_thread.start()
            where = "SMTP" if settings.smtp_url else f"the Maildir {settings.data_dir / 'outbox' / 'email'}"
            err.print(
                f"notifier running: worker ({threads} threads), scheduler, web on http://{settings.web_bind}; "
                f"e-mail goes to {where}. Ctrl-C stops."
            )
            if clock:
                err.print(f"clock starts at {agenda.local(clock(), config)} (--now)")
            serve(settings, stop=stop, clock=clock, service=service)
            err.print("stopping: finishing in-flight deliveries")
            web_server.should_exit = True
            web_thread.join(timeout=15)
    finally:
        service.close()


def _parse_now(value: str, config: Config) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise UsageError(f"--now: {value!r} is not a date and time like '2019-07-09 08:59'") from None
    return normalise(moment if moment.tzinfo else moment.replace(tzinfo=config.tz), config.tz)


# ---------------------------------------------------------------------------
# rehearse
# ---------------------------------------------------------------------------


@cli.command()
@click.argument("consultation")
def rehearse(consultation: str) -> None:
    """Fire the whole timeline now, in order, into an outbox (never live), and show who gets what."""
    settings = _settings()
    config = _load(settings)
    result = run_rehearsal(settings, consultation)
    out.print(
        f"Rehearsal of {result.consultation_id} ({result.title}): {len(result.events)} events fired "
        f"into {result.folder} (nothing went live; the real ledger is untouched)."
    )
    out.print()
    timeline_table = Table(title="Timeline", title_justify="left")
    for column in ("When", "Event", "E-mails", "Suppressed", "Posts"):
        timeline_table.add_column(column, justify="right" if column in ("E-mails", "Suppressed") else "left")
    for event in result.events:
        mine = [r for r in result.received if r.event == event.name]
        emails = [r for r in mine if registry.per_recipient(r.channel)]
        timeline_table.add_row(
            agenda.local(event.at, config) if event.at else "on demand (rehearsed now)",
            event.name,
            str(sum(r.status in SUCCEEDED for r in emails)),
            str(sum(r.status == "suppressed" for r in emails)),
            ", ".join(r.channel for r in mine if not registry.per_recipient(r.channel)) or "-",
        )
    out.print(timeline_table)

    people = Table(title="What each stakeholder receives", title_justify="left", show_lines=True)
    for column in ("Stakeholder", "Lists", "Receives"):
        people.add_column(column, overflow="fold")
    by_person: dict[str, list[Any]] = {}
    for r in result.received:
        if registry.per_recipient(r.channel):
            by_person.setdefault(r.recipient, []).append(r)
    for address, items in sorted(by_person.items(), key=lambda kv: (kv[1][0].name or kv[0]).lower()):
        first = items[0]
        who = f"{first.name} <{address}>" if first.name else address
        lines = [
            f"{agenda.local(r.at, config)}  {r.event}: " + (r.what if r.status in SUCCEEDED else f"not sent ({r.what})")
            for r in items
        ]
        people.add_row(who, ", ".join(first.lists), "\n".join(lines))
    out.print(people)

    posts = Table(title="Posts", title_justify="left", show_lines=True)
    for column in ("When", "Account", "Post"):
        posts.add_column(column, overflow="fold")
    for r in result.received:
        if not registry.per_recipient(r.channel):
            posts.add_row(agenda.local(r.at, config), r.channel, r.what)
    out.print(posts)


cli.add_command(db)
cli.add_command(responses)
cli.add_command(evidence)
cli.add_command(users)
cli.add_command(bounces)


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM ends a command the way Ctrl-C does: ``finally`` blocks and exit handlers run, so
    the embedded Redis is released (the last user stops it). Commands that stop cleanly on
    SIGTERM (worker, scheduler, run) install their own handler instead."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the CLI, mapping errors to the contract's exit codes."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    no_collection_at_exit()
    try:
        cli.main(args=argv, prog_name="notifier", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_INVALID)
    except ConfigError as exc:
        _problems(exc.problems)
        sys.exit(EXIT_INVALID)
    except NotifierError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        sys.exit(EXIT_INVALID)
    sys.exit(EXIT_OK)
