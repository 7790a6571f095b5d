"""The commands as the policy team runs them on the bundled example: exit codes and output."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from email import message_from_string, policy

import httpx
import pytest

from tests.conftest import Project, SmtpServer, free_port, wait_until

JANE = "jane.smith@telford-wrekin-csp.example"


@pytest.fixture
def wide(project: Project, redis_url: str) -> Project:
    """The example on the test Redis, printing tables wide enough not to wrap."""
    project.env.update({"NOTIFIER_REDIS_URL": redis_url, "COLUMNS": "300"})
    return project


def test_validate_passes_the_example_and_warns_about_outbox_accounts(wide: Project) -> None:
    result = wide.run("validate")
    assert result.returncode == 0, result.stderr
    assert "OK: 1 consultation(s)" in result.stdout
    assert "warning: account 'pcc-x' is in outbox mode (NOTIFIER_PCC_X_TOKEN is not set)" in result.stderr


def test_plan_lists_the_2019_timeline_in_british_summer_time_with_audience_sizes(wide: Project) -> None:
    result = wide.run("plan", "soc-strategy-2019", check=True)
    lines = result.stdout.splitlines()
    opened = next(line for line in lines if " opened " in line)
    assert "Tue 09 Jul 2019 09:00 BST" in opened
    assert "36 (1 suppressed)" in opened
    reminder = next(line for line in lines if " reminder " in line)
    assert "Thu 08 Aug 2019 23:59 BST" in reminder
    assert "Europe/London" in result.stdout
    # long past and never fired: the scheduler would not fire it now
    assert "missed" in opened


def test_plan_shows_an_event_as_fired_after_send(wide: Project) -> None:
    wide.run("send", "soc-strategy-2019", "opened", "--wait", check=True)
    opened = next(line for line in wide.run("plan", check=True).stdout.splitlines() if " opened " in line)
    assert "fired" in opened


def test_preview_prints_the_whole_email_for_one_stakeholder(wide: Project) -> None:
    result = wide.run("preview", "soc-strategy-2019", "opened", "--to", JANE, check=True)
    out = result.stdout
    assert "From: PCC Policy Team <policy@pcc.example>" in out
    assert f"To: Jane Smith <{JANE}>" in out
    assert "Subject: Consultation open: Serious and Organised Crime Strategy" in out
    assert "text/plain" in out and "text/html" in out
    assert "Dear Jane Smith" in out or "Dear Jane" in out
    assert '<html lang="en-GB">' in out and "<p style=" in out, "the HTML part is printed as HTML"


def test_preview_of_a_post_shows_its_length_against_the_limit(wide: Project) -> None:
    result = wide.run("preview", "soc-strategy-2019", "opened", "--channel", "pcc-x", check=True)
    assert "https://www.pcc.example/consultations/soc-strategy" in result.stdout
    assert "280" in result.stdout


def test_preview_prints_emoji_codes_and_square_brackets_literally_as_they_are_sent(wide: Project) -> None:
    # Rich would turn :x: into an emoji and [red]/[bold] into styles (dropping the brackets).
    wide.write(
        "templates/outcome/email.j2",
        "{% block subject %}Results :x: [red]now[/red]{% endblock %}\n"
        "{% block text %}Tick :white_check_mark: or cross :x:, see [bold]here[/bold] [link=x]y[/link]"
        "{% endblock %}\n",
    )
    wide.write("templates/outcome/x.j2", "Post :x: [red]out[/red] {{ consultation.url }}")
    email = wide.run("preview", "soc-strategy-2019", "outcome", "--channel", "email", check=True).stdout
    assert "Subject: Results :x: [red]now[/red]" in email
    assert "Tick :white_check_mark: or cross :x:, see [bold]here[/bold] [link=x]y[/link]" in email
    assert "\u274c" not in email and "\u2705" not in email
    post = wide.run("preview", "soc-strategy-2019", "outcome", "--channel", "pcc-x", check=True).stdout
    assert "Post :x: [red]out[/red] https://" in post


def test_preview_of_someone_not_in_the_audience_is_a_clear_error(wide: Project) -> None:
    result = wide.run("preview", "soc-strategy-2019", "opened", "--to", "nobody@nowhere.example")
    assert result.returncode == 1
    assert "nobody@nowhere.example" in result.stderr


def test_send_dry_run_renders_everything_and_sends_nothing(wide: Project, smtp_server: SmtpServer) -> None:
    wide.env["NOTIFIER_SMTP_URL"] = smtp_server.url
    result = wide.run("send", "soc-strategy-2019", "opened", "--dry-run", check=True)
    assert "would send" in result.stdout and "nothing sent" in result.stdout
    assert smtp_server.handler.count() == 0
    assert "nothing has been sent yet" in wide.run("report", "soc-strategy-2019", check=True).stdout
    # and the event can still be sent for real afterwards
    assert "fired soc-strategy-2019:opened:1" in wide.run("send", "soc-strategy-2019", "opened").stdout


def test_send_wait_off_a_terminal_prints_progress_lines_with_counts_by_status(wide: Project) -> None:
    # stderr is a pipe here, as under cron, systemd or CI: a progress bar would print nothing.
    result = wide.run("send", "soc-strategy-2019", "opened", "--wait", check=True)
    lines = [line for line in result.stderr.splitlines() if line.startswith("delivering: ")]
    assert len(lines) >= 2, result.stderr
    assert lines[-1].startswith("delivering: 41 of 41 final (outbox 40, suppressed 1) after "), lines[-1]


def test_send_wait_on_the_embedded_redis_delivers_to_the_maildir_outbox(project: Project) -> None:
    # no NOTIFIER_REDIS_URL and no SMTP: the embedded Redis and the Maildir, as on a fresh clone
    result = project.run("send", "soc-strategy-2019", "opened", "--wait", check=True)
    assert "no worker is running: delivering in this process" in result.stdout
    maildir = project.data / "outbox" / "email" / "new"
    messages = [message_from_string(p.read_text(), policy=policy.default) for p in maildir.iterdir()]
    assert len(messages) == 36
    assert any(JANE in str(m["To"]).lower() for m in messages)
    report = project.run("report", "soc-strategy-2019", "--format", "csv", check=True)
    rows = report.stdout.splitlines()
    assert rows[0].startswith("occurrence,event,channel,recipient")
    assert len(rows) == 1 + 36 + 1 + 4, "36 e-mails, one suppressed, four account posts"
    project.env["COLUMNS"] = "80"
    table = project.run("report", "soc-strategy-2019", check=True).stdout
    assert "opened:1" in table, "an 80-column table still names the event"
    assert JANE[:28] in table, "and keeps room for the recipient"
    assert max(map(len, table.splitlines())) <= 80, "every line fits the terminal: nothing wraps or is cut"
    assert "pcc-facebook" in table and "suppressed" in table, "a post's row names its account; headers are whole"
    assert "--format csv or json gives every field" in table
    assert not list((project.data / "redis").glob("*.sock")), "the embedded Redis stops with the last user"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("send", "no-such-consultation", "opened"), "no-such-consultation"),
        (("preview", "soc-strategy-2019", "opened", "--channel", "no-such-account"), "no-such-account"),
        (("report", "no-such-consultation"), "no-such-consultation"),
        (("plan", "no-such-consultation"), "no-such-consultation"),
    ],
)
def test_unknown_names_exit_1_with_a_message_naming_them(wide: Project, args: tuple[str, ...], message: str) -> None:
    result = wide.run(*args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def _healthy(url: str) -> bool:
    """Whether ``url`` answers 200 (False while the server is not up yet)."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
def test_run_fires_an_event_when_it_comes_due_and_stops_cleanly(
    project: Project, redis_url: str, smtp_server: SmtpServer
) -> None:
    port = free_port()
    project.env.update(
        {
            "NOTIFIER_REDIS_URL": redis_url,
            "NOTIFIER_SMTP_URL": smtp_server.url,
            "NOTIFIER_WEB_BIND": f"127.0.0.1:{port}",
        }
    )
    # the example opens at 09:00 on 9 July 2019: start the clock eight seconds before
    process = subprocess.Popen(
        [sys.executable, "-m", "notifier", "run", "--threads", "4", "--now", "2019-07-09 08:59:52"],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        wait_until(
            lambda: _healthy(f"http://127.0.0.1:{port}/healthz?require=workers,scheduler"),
            30,
            "run to serve /healthz with a worker and a leader",
        )
        assert smtp_server.handler.count() == 0, "nothing is sent before the event is due"
        wait_until(lambda: smtp_server.handler.count() >= 36, deadline - time.monotonic(), "the 36 e-mails")
        assert smtp_server.handler.count() == 36
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "fired soc-strategy-2019:opened:1" in stderr
    assert "scheduled soc-strategy-2019:reminder at 2019-08-08 23:59:00+01:00" in stderr
