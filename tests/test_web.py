"""``notifier web`` over real HTTP (uvicorn on an ephemeral port) against a real Redis.

Redis: the machine's server on 127.0.0.1:6379, database 13, when it answers; otherwise
notifier's embedded server. The database is flushed before and after each test.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from notifier.config import Settings
from notifier.ledger import Ledger
from notifier.tokens import sign
from notifier.web import LEADER_KEY, ConnectionLimits, bound_port, make_server, mask_email, parse_bind
from tests.conftest import wait_until
from tests.console_fixtures import ROOT, web_settings

KEY = b"web-test-secret"
JANE = "jane.smith@telford.example"
#: sign(KEY, JANE) as minted before tokens were encrypted: links in inboxes look like this.
OLD_JANE = "amFuZS5zbWl0aEB0ZWxmb3JkLmV4YW1wbGU.woVHDJ-CIgdY-0_biOqCDg"


# ---------------------------------------------------------------------------
# Fixtures: Redis, settings, a live server
# ---------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ledger(redis_client: redis.Redis) -> Ledger:
    """The real ledger on the test database, to check what the web service did."""
    return Ledger(redis_client)


def make_settings(tmp_path: Path, redis_url: str, config_dir: Path = ROOT / "config") -> Settings:
    """Settings as ``notifier web`` would read them, on an ephemeral port."""
    return web_settings(tmp_path, redis_url, config_dir=config_dir, secret=KEY.decode(), web_bind="127.0.0.1:0")


@dataclass
class Servers:
    """Starts real uvicorn servers in threads; stops them all at teardown."""

    running: list[tuple[object, threading.Thread]] = field(default_factory=list)

    def start(
        self, settings: Settings, client: redis.Redis | None = None, limits: ConnectionLimits | None = None
    ) -> str:
        """Start ``make_server(settings)``; its base URL once it accepts connections."""
        server = make_server(settings, client=client, limits=limits)
        thread = threading.Thread(target=server.run, name="test-web", daemon=True)
        thread.start()
        self.running.append((server, thread))
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "the web server died on startup"
            assert time.monotonic() < deadline, "the web server did not start"
            time.sleep(0.01)
        port = bound_port(server)
        assert port
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for server, thread in self.running:
            server.should_exit = True  # type: ignore[attr-defined]
            thread.join(timeout=15)
            assert not thread.is_alive(), "the web server did not shut down"


@pytest.fixture
def servers() -> Iterator[Servers]:
    """A factory of live servers, all shut down gracefully afterwards."""
    found = Servers()
    yield found
    found.stop()


@pytest.fixture
def base(servers: Servers, tmp_path: Path, redis_url: str) -> str:
    """The base URL of a live ``notifier web`` on the test database."""
    return servers.start(make_settings(tmp_path, redis_url))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """An HTTP client that fails a test rather than hang."""
    with httpx.Client(timeout=10) as client:
        yield client


# ---------------------------------------------------------------------------
# Reading pages like a browser
# ---------------------------------------------------------------------------


@dataclass
class Form:
    method: str
    action: str | None
    fields: dict[str, str]
    buttons: list[str]


class PageParser(HTMLParser):
    """Collects what a user or browser acts on: lang, title, headings, forms, scripts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lang: str | None = None
        self.title = ""
        self.h1: list[str] = []
        self.text: list[str] = []
        self.forms: list[Form] = []
        self.scripts = 0
        self.links: list[tuple[str, str]] = []  # (href, text)
        self.ids: dict[str, str] = {}  # id -> tag
        self.header = ""
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "html":
            self.lang = a.get("lang")
        elif tag == "script":
            self.scripts += 1
        elif tag == "form":
            self.forms.append(Form(a.get("method", "get").lower(), a.get("action"), {}, []))
        elif tag == "input" and self.forms and a.get("type") == "hidden":
            self.forms[-1].fields[a.get("name", "")] = a.get("value", "")
        elif tag == "a":
            self.links.append((a.get("href", ""), ""))
        if "id" in a:
            self.ids[a["id"]] = tag
        if tag not in ("input", "meta", "br"):
            self._in.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._in:
            while self._in.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if "style" in self._in:
            return
        if "title" in self._in:
            self.title += data
        if "h1" in self._in:
            self.h1.append(data.strip())
        if "button" in self._in and self.forms:
            self.forms[-1].buttons.append(data.strip())
        if "a" in self._in and self.links:
            self.links[-1] = (self.links[-1][0], (self.links[-1][1] + data).strip())
        if "header" in self._in:
            self.header += data
        self.text.append(data)

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


def parse(response: httpx.Response) -> PageParser:
    parser = PageParser()
    parser.feed(response.text)
    return parser


def submit(http: httpx.Client, response: httpx.Response, button: str) -> httpx.Response:
    """Press ``button`` on the page as a browser would: its form's method, action and fields."""
    page = parse(response)
    forms = [f for f in page.forms if button in f.buttons]
    assert len(forms) == 1, f"expected one form with a {button!r} button, found {page.forms}"
    form = forms[0]
    assert form.method == "post"
    target = response.url.join(form.action) if form.action else response.url
    return http.post(target, data=form.fields)


def tampered(token: str, position: int) -> str:
    """``token`` with the character at ``position`` replaced by another base64url one."""
    old = token[position]
    new = "A" if old != "A" else "B"
    return token[:position] + new + token[position + 1 :]


# ---------------------------------------------------------------------------
# Unsubscribe
# ---------------------------------------------------------------------------


def test_unsubscribe_round_trip_one_click_then_resubscribe(base: str, http: httpx.Client, ledger: Ledger) -> None:
    token = sign(KEY, JANE)

    shown = http.get(f"{base}/unsubscribe/{token}")
    assert shown.status_code == 200
    assert shown.headers["content-type"].startswith("text/html")
    page = parse(shown)
    assert page.lang == "en-GB"
    assert page.title.startswith("Unsubscribe")
    assert page.h1 == ["Unsubscribe from consultation e-mails"]
    assert "j***@telford.example" in page.words
    assert "Office of the Police and Crime Commissioner for West Mercia" in page.words
    assert [f.buttons for f in page.forms] == [["Unsubscribe"]]
    assert page.forms[0].method == "post"
    assert page.scripts == 0
    assert ledger.suppression(JANE) is None, "showing the page must not unsubscribe"

    # What Gmail and others send for List-Unsubscribe-Post (RFC 8058), with no cookies.
    done = http.post(
        f"{base}/unsubscribe/{token}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert done.status_code == 200
    assert parse(done).h1 == ["You have been unsubscribed"]
    assert ledger.suppression(JANE) == "unsubscribed"

    back = submit(http, done, "Resubscribe")
    assert back.status_code == 200
    assert back.url.path == f"/resubscribe/{token}"
    assert parse(back).h1 == ["You have been resubscribed"]
    assert ledger.suppression(JANE) is None
    assert ledger.suppressed() == {}


def test_the_pages_button_unsubscribes_and_the_page_then_offers_the_way_back(
    base: str, http: httpx.Client, ledger: Ledger
) -> None:
    token = sign(KEY, "Jane.Smith@Telford.example")  # addresses compare case-insensitively
    done = submit(http, http.get(f"{base}/unsubscribe/{token}"), "Unsubscribe")
    assert done.status_code == 200
    assert ledger.suppression(JANE) == "unsubscribed"

    again = parse(http.get(f"{base}/unsubscribe/{token}"))
    assert again.h1 == ["You are already unsubscribed"]
    assert [f.buttons for f in again.forms] == [["Resubscribe"]]

    # Unsubscribing twice is harmless and keeps the first record.
    assert http.post(f"{base}/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert ledger.suppressed() == {JANE: "unsubscribed"}


def test_an_address_suppressed_for_a_bounce_is_explained_and_kept_as_such(
    base: str, http: httpx.Client, ledger: Ledger
) -> None:
    ledger.suppress(JANE, "bounced")
    token = sign(KEY, JANE)
    page = parse(http.get(f"{base}/unsubscribe/{token}"))
    assert "could not be delivered" in page.words
    assert [f.buttons for f in page.forms] == [["Resubscribe"]]
    http.post(f"{base}/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert ledger.suppression(JANE) == "bounced"


def test_a_link_sent_before_tokens_were_encrypted_still_unsubscribes(
    base: str, http: httpx.Client, ledger: Ledger
) -> None:
    assert http.get(f"{base}/unsubscribe/{OLD_JANE}").status_code == 200
    assert http.post(f"{base}/unsubscribe/{OLD_JANE}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert ledger.suppressed() == {JANE: "unsubscribed"}


def test_get_and_head_never_unsubscribe(base: str, http: httpx.Client, ledger: Ledger) -> None:
    # Link scanners and mail clients prefetch links; only a POST may act.
    token = sign(KEY, JANE)
    for _ in range(3):
        assert http.get(f"{base}/unsubscribe/{token}").status_code == 200
        assert http.head(f"{base}/unsubscribe/{token}").status_code == 200
    assert http.get(f"{base}/resubscribe/{token}").status_code == 405
    assert ledger.suppressed() == {}


def _bad_tokens() -> dict[str, str]:
    good = sign(KEY, JANE)
    body, mac = OLD_JANE.split(".")
    other = base64.urlsafe_b64encode(b"someone.else@telford.example").rstrip(b"=").decode()
    return {
        "forged": base64.urlsafe_b64encode(bytes(16) + b"someone.else@telford.example").rstrip(b"=").decode(),
        "altered at the start": tampered(good, 2),
        "altered at the end": tampered(good, len(good) - 3),
        "truncated": good[:-4],
        "another key": sign(b"some-other-key", JANE),
        "old format, forged": f"{body}.{base64.urlsafe_b64encode(b'0123456789abcdef').rstrip(b'=').decode()}",
        "old format, signature altered": tampered(OLD_JANE, len(body) + 1 + len(mac) // 2),
        "old format, address altered": tampered(OLD_JANE, 2),
        "old format, address swapped": f"{other}.{mac}",
        "old format, signature missing": f"{body}.",
        "old format, no dot": body,
        "garbage": "not-a-token",
        "markup": "<img src=x onerror=alert(1)>",
    }


@pytest.mark.parametrize("kind", list(_bad_tokens()))
def test_a_bad_token_gets_400_and_changes_nothing(kind: str, base: str, http: httpx.Client, ledger: Ledger) -> None:
    token = _bad_tokens()[kind]
    ledger.suppress("someone.else@telford.example", "unsubscribed")  # must stay suppressed
    before = ledger.suppressed()

    for method, path in (("GET", "unsubscribe"), ("POST", "unsubscribe"), ("POST", "resubscribe")):
        form = {"List-Unsubscribe": "One-Click"} if method == "POST" else None
        response = http.request(method, f"{base}/{path}/{quote(token, safe='')}", data=form)
        assert response.status_code == 400, (method, path)
        page = parse(response)
        assert page.lang == "en-GB"
        assert page.h1 == ["This link is not valid"]
        assert page.forms == []
        assert token not in response.text, "the token is not reflected"
        assert "<img" not in response.text

    assert ledger.suppressed() == before
    assert ledger.suppression(JANE) is None


def test_everything_put_in_a_page_is_escaped(
    servers: Servers, tmp_path: Path, redis_url: str, http: httpx.Client
) -> None:
    # The organisation comes from config, and the address from a token that any address
    # (valid or not) can be signed into; neither may inject markup.
    config = tmp_path / "config"
    config.mkdir()
    (config / "notifier.yaml").write_text(
        'organisation: "Office <b>& Co</b>"\n'
        'email: {from: "Team <team@pcc.example>", reply_to: "x\\"><script>y@pcc.example"}\n'
    )
    base = servers.start(make_settings(tmp_path, redis_url, config_dir=config))
    token = sign(KEY, "o'brien@<script>alert(1)</script>.example")

    for response in (
        http.get(f"{base}/"),
        http.get(f"{base}/unsubscribe/{token}"),
        http.post(f"{base}/unsubscribe/{token}"),
        http.post(f"{base}/resubscribe/{token}"),
    ):
        assert response.status_code == 200
        assert "<script" not in response.text
        assert "<b>" not in response.text
        assert "&lt;b&gt;&amp; Co&lt;/b&gt;" in response.text
        page = parse(response)
        assert page.scripts == 0
        assert "Office <b>& Co</b>" in page.words  # shown as text, as written
    assert "o***@<script>alert(1)</script>.example" in parse(http.get(f"{base}/unsubscribe/{token}")).words


def test_pages_forbid_framing_caching_referrers_and_foreign_content(base: str, http: httpx.Client) -> None:
    response = http.get(f"{base}/unsubscribe/{sign(KEY, JANE)}")
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp
    assert "form-action 'self'" in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "no-store" in response.headers["cache-control"]
    assert "server" not in response.headers


def test_the_pages_inline_style_is_exactly_the_one_their_csp_allows(base: str, http: httpx.Client) -> None:
    # A browser drops a style whose hash the CSP does not list: the page would lose its layout.
    for response in (http.get(f"{base}/"), http.get(f"{base}/unsubscribe/{sign(KEY, JANE)}")):
        style = response.text.split("<style>", 1)[1].split("</style>", 1)[0]
        digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
        assert f"style-src 'sha256-{digest}'" in response.headers["content-security-policy"]
        assert "skip-link" in style


def test_unsubscribe_while_redis_is_down_says_so_and_asks_to_retry(
    servers: Servers, tmp_path: Path, http: httpx.Client
) -> None:
    base = servers.start(make_settings(tmp_path, f"redis://127.0.0.1:{_closed_port()}/0"))
    response = http.post(f"{base}/unsubscribe/{sign(KEY, JANE)}", data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 503
    assert response.headers["retry-after"]
    page = parse(response)
    assert page.lang == "en-GB"
    assert "Nothing has been changed" in page.words


def test_tokens_stay_out_of_the_access_log(base: str, http: httpx.Client) -> None:
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep()
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    try:
        token = sign(KEY, JANE)
        http.get(f"{base}/unsubscribe/{token}")
        http.post(f"{base}/unsubscribe/{token}")
        deadline = time.monotonic() + 5
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        access.removeHandler(handler)
    assert len(lines) >= 2
    assert all(token not in line and "telford" not in line for line in lines)
    assert any("/unsubscribe/***" in line for line in lines)


def test_a_token_under_any_path_or_case_stays_out_of_the_access_log(base: str, http: httpx.Client) -> None:
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    token = sign(KEY, JANE)
    paths = [
        f"/Unsubscribe/{token}",
        f"/UNSUBSCRIBE/{token}",
        f"/ReSubscribe/{OLD_JANE}",
        f"/unsubscribe/{token}/",
        f"/links/{token}",
        f"/u/{token}?from=mail",
        f"/?t={token}",
        f"/unsubscribe/{quote(token + '.x', safe='')}",
    ]
    handler = Keep()
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    try:
        for path in paths:
            http.get(f"{base}{path}")
        deadline = time.monotonic() + 5
        while len(lines) < len(paths) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        access.removeHandler(handler)
    assert len(lines) == len(paths)
    for line in lines:
        assert token not in line and OLD_JANE.split(".")[0] not in line and OLD_JANE.split(".")[1] not in line, line
        assert "***" in line, line
    # what is no token is kept: the log still says what was asked for
    assert any("/links/***" in line for line in lines)


# ---------------------------------------------------------------------------
# Connections: no client holds one for ever
# ---------------------------------------------------------------------------

QUICK = ConnectionLimits(head_timeout=1.0, keep_alive=1, concurrency=3)


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _closed_by_server(sock: socket.socket, *, within: float, trickle: bytes = b"") -> float:
    """Seconds until the server closes ``sock`` (reading, and sending ``trickle`` a byte
    every 0.2 s meanwhile); fails if it is still open after ``within`` seconds."""
    start = time.monotonic()
    pending = trickle
    while time.monotonic() - start < within:
        readable, _, _ = select.select([sock], [], [], 0.2)
        if readable:
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - start
            except ConnectionResetError:
                return time.monotonic() - start
        elif pending:
            try:
                sock.sendall(pending[:1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start
            pending = pending[1:]
    pytest.fail(f"the server kept the connection open for {within} s")


def test_a_connection_that_never_sends_a_request_is_closed_within_the_head_timeout(
    servers: Servers, tmp_path: Path, redis_url: str
) -> None:
    base = servers.start(make_settings(tmp_path, redis_url), limits=QUICK)
    with _connect(base) as sock:
        took = _closed_by_server(sock, within=QUICK.head_timeout + 4)
    assert took >= QUICK.head_timeout * 0.9


def test_headers_sent_a_byte_at_a_time_do_not_hold_a_connection_past_the_head_timeout(
    servers: Servers, tmp_path: Path, redis_url: str
) -> None:
    base = servers.start(make_settings(tmp_path, redis_url), limits=QUICK)
    slow = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200  # never finished
    with _connect(base) as sock:
        took = _closed_by_server(sock, within=QUICK.head_timeout + 4, trickle=slow)
    assert took >= QUICK.head_timeout * 0.9


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(
    servers: Servers, tmp_path: Path, redis_url: str
) -> None:
    base = servers.start(make_settings(tmp_path, redis_url), limits=QUICK)
    with _connect(base) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:80]
        _closed_by_server(sock, within=QUICK.keep_alive + 4)


def test_connections_beyond_the_cap_get_503_until_the_held_ones_are_closed(
    servers: Servers, tmp_path: Path, redis_url: str, http: httpx.Client
) -> None:
    base = servers.start(make_settings(tmp_path, redis_url), limits=QUICK)
    held = [_connect(base) for _ in range(QUICK.concurrency)]
    try:
        wait_until(lambda: httpx.get(f"{base}/", timeout=10).status_code == 503, 5, "the cap to be reached")
        for sock in held:
            _closed_by_server(sock, within=QUICK.head_timeout + 4)
        assert httpx.get(f"{base}/", timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()


def test_every_page_starts_with_a_skip_link_to_its_main_content_under_a_header_naming_the_organisation(
    base: str, http: httpx.Client
) -> None:
    token = sign(KEY, JANE)
    for response in (
        http.get(f"{base}/"),
        http.get(f"{base}/unsubscribe/{token}"),
        http.post(f"{base}/unsubscribe/{token}"),
        http.post(f"{base}/resubscribe/{token}"),
        http.get(f"{base}/unsubscribe/not-a-token"),
        http.get(f"{base}/no-such-page"),
    ):
        page = parse(response)
        assert page.lang == "en-GB"
        assert page.links[0] == ("#main", "Skip to main content"), response.url
        assert page.ids["main"] == "main", "the skip link leads to the main landmark"
        assert page.header.strip() == "Office of the Police and Crime Commissioner for West Mercia"


def test_the_address_is_masked_to_its_first_character_and_domain() -> None:
    assert mask_email(JANE) == "j***@telford.example"
    assert mask_email("a@b.example") == "a***@b.example"
    assert mask_email("nonsense") == "n***"


# ---------------------------------------------------------------------------
# Health, metrics, other pages
# ---------------------------------------------------------------------------


def test_healthz_reports_redis_ok_and_nobody_alive_yet(base: str, http: httpx.Client) -> None:
    response = http.get(f"{base}/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["redis"]["ok"] is True
    assert isinstance(body["redis"]["latency_ms"], int | float)
    assert body["workers"] == {"alive": [], "count": 0}
    assert body["scheduler"] == {"leader": None}
    # Workers and a scheduler can be made mandatory, e.g. for a container healthcheck.
    strict = http.get(f"{base}/healthz", params={"require": "workers,scheduler"})
    assert strict.status_code == 503
    assert strict.json()["status"] == "fail"
    assert sorted(strict.json()["failing"]) == ["scheduler", "workers"]


def test_healthz_lists_live_workers_and_the_leader(base: str, http: httpx.Client, redis_client: redis.Redis) -> None:
    now_ms = time.time() * 1000
    redis_client.zadd(
        "notifier:workers", {"host-a:12:w1": now_ms, "host-b:7:w2": now_ms - 1000, "host-c:9:dead": now_ms - 3_600_000}
    )
    redis_client.set(LEADER_KEY, "host-a:11:scheduler")

    body = http.get(f"{base}/healthz").json()
    assert body["workers"] == {"alive": ["host-a:12:w1", "host-b:7:w2"], "count": 2}
    assert body["scheduler"] == {"leader": "host-a:11:scheduler"}
    strict = http.get(f"{base}/healthz?require=workers&require=scheduler")
    assert strict.status_code == 200
    assert strict.json()["status"] == "ok"


def test_healthz_rejects_an_unknown_requirement(base: str, http: httpx.Client) -> None:
    response = http.get(f"{base}/healthz", params={"require": "workerz"})
    assert response.status_code == 400
    assert "workerz" in response.json()["error"]


@pytest.mark.parametrize("where", ["closed TCP port", "missing unix socket"])
def test_healthz_is_503_quickly_when_redis_is_unreachable(
    where: str, servers: Servers, tmp_path: Path, http: httpx.Client
) -> None:
    url = (
        f"redis://:hunter2@127.0.0.1:{_closed_port()}/0"
        if where == "closed TCP port"
        else f"unix://{tmp_path}/nothing-here.sock"
    )
    base = servers.start(make_settings(tmp_path, url))
    started = time.monotonic()
    response = http.get(f"{base}/healthz")
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["failing"] == ["redis"]
    assert body["redis"]["ok"] is False
    assert body["redis"]["error"]
    assert "hunter2" not in response.text


def test_healthz_gives_up_on_a_redis_that_accepts_but_never_answers(
    servers: Servers, tmp_path: Path, http: httpx.Client
) -> None:
    with socket.socket() as silent:  # the kernel completes connections; nobody ever replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        base = servers.start(make_settings(tmp_path, f"redis://127.0.0.1:{silent.getsockname()[1]}/0"))
        started = time.monotonic()
        response = http.get(f"{base}/healthz")
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["redis"]["ok"] is False
    assert elapsed < 4.5, f"took {elapsed:.1f} s"


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def test_metrics_count_workers_and_suppressions(
    base: str, http: httpx.Client, redis_client: redis.Redis, ledger: Ledger
) -> None:
    redis_client.zadd("notifier:workers", {"w1": time.time() * 1000})
    http.post(f"{base}/unsubscribe/{sign(KEY, JANE)}", data={"List-Unsubscribe": "One-Click"})
    ledger.suppress("gone@telford.example", "bounced")
    response = http.get(f"{base}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert found["notifier_redis_up", ()] == 1
    assert found["notifier_workers_alive", ()] == 1
    assert found["notifier_scheduler_leader", ()] == 0
    assert found["notifier_suppressed_addresses", (("reason", "unsubscribed"),)] == 1
    assert found["notifier_suppressed_addresses", (("reason", "bounced"),)] == 1
    assert 0 < found["notifier_redis_latency_seconds", ()] < 5


def test_metrics_say_redis_is_down_when_it_is(servers: Servers, tmp_path: Path, http: httpx.Client) -> None:
    base = servers.start(make_settings(tmp_path, f"redis://127.0.0.1:{_closed_port()}/0"))
    response = http.get(f"{base}/metrics")
    assert response.status_code == 200
    assert samples(response.text) == {("notifier_redis_up", ()): 0}


def test_index_names_the_organisation_and_unknown_pages_are_404(base: str, http: httpx.Client) -> None:
    index = parse(http.get(f"{base}/"))
    assert index.lang == "en-GB"
    assert index.h1 == ["Office of the Police and Crime Commissioner for West Mercia"]
    missing = http.get(f"{base}/no-such-page")
    assert missing.status_code == 404
    assert parse(missing).h1 == ["Page not found"]


def test_a_client_given_to_the_app_is_used_and_left_open(
    servers: Servers, tmp_path: Path, redis_client: redis.Redis, http: httpx.Client, ledger: Ledger
) -> None:
    # `notifier run` passes its own client; the settings' URL must then not matter.
    settings = make_settings(tmp_path, f"redis://127.0.0.1:{_closed_port()}/0")
    base = servers.start(settings, client=redis_client)
    http.post(f"{base}/unsubscribe/{sign(KEY, JANE)}")
    assert ledger.suppression(JANE) == "unsubscribed"
    assert http.get(f"{base}/healthz").json()["redis"]["ok"] is True
    servers.stop()
    servers.running.clear()
    assert redis_client.ping()


def test_make_server_refuses_a_missing_secret_key_with_an_external_redis(tmp_path: Path) -> None:
    from notifier.errors import ConfigError

    settings = Settings(config_dir=ROOT / "config", data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigError, match="NOTIFIER_SECRET_KEY"):
        make_server(settings)


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_web_bind_parses(bind: str, expected: tuple[str, int]) -> None:
    assert parse_bind(bind) == expected


@pytest.mark.parametrize("bind", ["8080", "host", "host:port", "1.2.3.4:99999", "::1:8080", ""])
def test_web_bind_rejects_nonsense_naming_the_variable(bind: str) -> None:
    from notifier.errors import ConfigError

    with pytest.raises(ConfigError, match="NOTIFIER_WEB_BIND"):
        parse_bind(bind)


# ---------------------------------------------------------------------------
# Admin API
# ---------------------------------------------------------------------------


def test_admin_api_serves_the_report_and_suppressions_only_with_the_token(
    servers: Servers, tmp_path: Path, redis_url: str, http: httpx.Client, ledger: Ledger
) -> None:
    from datetime import UTC, datetime

    from notifier.ledger import Record

    settings = make_settings(tmp_path, redis_url).model_copy(update={"env": {"NOTIFIER_ADMIN_TOKEN": "admin-secret"}})
    base = servers.start(settings)
    occurrence = ledger.claim_occurrence("soc-strategy-2019", "opened", at=datetime(2019, 7, 9, 8, tzinfo=UTC))
    assert occurrence is not None
    ledger.add(occurrence, [Record(channel="email", recipient="jane@csp.example", name="Jane", lists=("csp",))])
    ledger.suppress("gone@csp.example", "unsubscribed")
    url = f"{base}/api/consultations/soc-strategy-2019/report"

    assert http.get(url).status_code == 401
    assert http.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = http.get(url, headers={"Authorization": "Bearer admin-secret"})
    assert answer.status_code == 200
    [row] = answer.json()["deliveries"]
    assert (row["recipient"], row["status"], row["lists"]) == ("jane@csp.example", "pending", "csp")
    unknown = http.get(f"{base}/api/consultations/nope/report", headers={"Authorization": "Bearer admin-secret"})
    assert unknown.status_code == 404
    suppressed = http.get(f"{base}/api/suppressions", headers={"Authorization": "Bearer admin-secret"})
    [entry] = suppressed.json()["suppressed"]
    assert (entry["email"], entry["reason"]) == ("gone@csp.example", "unsubscribed")


def test_admin_api_is_off_without_a_token_setting(base: str, http: httpx.Client) -> None:
    answer = http.get(f"{base}/api/suppressions", headers={"Authorization": "Bearer anything"})
    assert answer.status_code == 404
    assert "NOTIFIER_ADMIN_TOKEN" in answer.json()["error"]


# ---------------------------------------------------------------------------
# Packaging: a non-editable install (the Docker image's) has the templates
# ---------------------------------------------------------------------------


def test_an_installed_package_ships_every_template_and_renders_from_them(tmp_path: Path) -> None:
    # Built as the Dockerfile does (pyproject.toml, README.md and notifier/ only), so a template
    # missing from the package data fails here and not in production.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "notifier", source / "notifier", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("notifier-*.whl")
    templates = ROOT / "notifier" / "web" / "templates"
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"notifier/web/templates/{p.relative_to(templates).as_posix()}" for p in templates.rglob("*") if p.is_file()
    }
    assert expected and expected <= shipped, sorted(expected - shipped)

    installed = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(installed)
    names = sorted(p.relative_to(templates).as_posix() for p in templates.rglob("*.html"))
    check = (
        "import sys, notifier.web.render as r\n"
        "assert r.__file__.startswith(sys.argv[1]), r.__file__\n"
        "for name in sys.argv[2:]: r.templates.get_template(name)\n"
        "print(len(r.STYLE))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", check, str(installed), *names],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(installed)},
        cwd=tmp_path,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert int(loaded.stdout) > 0
