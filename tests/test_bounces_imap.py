"""``email.bounce_mailbox``: the scheduler reads bounces from a real IMAP server (pymap, on
loopback), over TLS with the test's own certificate, and records them like any other."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import ipaddress
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from notifier.config import Settings
from notifier.scheduler import Scheduler, offset_clock
from notifier.service import Service
from tests.certificates import new_key, self_signed
from tests.conftest import Project, SmtpServer, free_port, wait_until
from tests.record_fixtures import SOC
from tests.test_bounces import JANE, dsn, envelope_of, example, statuses

__all__ = ["example"]  # fixture
USER, PASSWORD = "demouser", "demopass"  # pymap's demo account


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    key = new_key()
    cert = self_signed(
        key,
        "127.0.0.1",
        (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
        (x509.BasicConstraints(ca=True, path_length=None), True),
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@pytest.fixture
def imap_server() -> Iterator[int]:
    """pymap's in-memory IMAP server on loopback (plain IMAP), with its demo account."""
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("pymap")), "--port", str(port), "--no-tls", "dict", "--demo-data"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _accepts(port), 30, "pymap to listen")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def imaps(imap_server: int, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """IMAP over TLS in front of the server (a TLS-terminating relay on loopback): its port and certificate."""
    cert, key = _certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    loop = asyncio.new_event_loop()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", imap_server)
        await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))

    server = loop.run_until_complete(asyncio.start_server(relay, "127.0.0.1", 0, ssl=context))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server.sockets[0].getsockname()[1], cert
    loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def deliver_to_mailbox(port: int, message: bytes) -> None:
    """Put ``message`` in the demo account's INBOX, as the mail server would."""
    imap = imaplib.IMAP4("127.0.0.1", port)
    imap.login(USER, PASSWORD)
    imap.append("INBOX", None, None, message)
    imap.logout()


def test_the_scheduler_reads_a_bounce_from_the_imap_mailbox_and_records_it(
    example: Project,
    smtp_server: SmtpServer,
    imap_server: int,
    imaps: tuple[int, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, cert = imaps
    example.run("send", SOC, "opened", "--wait", check=True)
    deliver_to_mailbox(imap_server, dsn(envelope_of(smtp_server, JANE), JANE))
    main = example.config / "notifier.yaml"
    main.write_text(
        main.read_text().replace(
            "  bounce_domain:", f"  bounce_mailbox: imaps://{USER}@127.0.0.1:{port}/INBOX\n  bounce_domain:"
        )
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the default context trusts the test's certificate
    service = Service(Settings.from_env({**example.env, "NOTIFIER_BOUNCE_PASSWORD": PASSWORD}))
    scheduler = Scheduler(service, clock=offset_clock(datetime(2019, 8, 1, tzinfo=UTC)), reload_every=0.1)
    try:
        scheduler.start()
        wait_until(lambda: statuses(example)[("opened", "email", JANE)] == "bounced", 60, "the bounce to be recorded")
    finally:
        scheduler.stop()
        service.close()
    imap = imaplib.IMAP4("127.0.0.1", imap_server)
    imap.login(USER, PASSWORD)
    imap.select("INBOX")
    assert imap.uid("SEARCH", "UNSEEN")[1] == [b""], "every message read is marked seen"
    imap.logout()
