"""``POST /api/bounces``: Amazon SES bounce notifications through SNS, signatures checked, against
a live ``notifier web``, real Redis and the record; the signing certificate is the test's own,
served on loopback and trusted through ``NOTIFIER_SNS_CERT_URL`` (Amazon's hosts stay the only
others trusted)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sqlalchemy import text

from notifier.broker import NAMESPACE
from notifier.config import Settings
from notifier.ledger import Ledger
from notifier.sns import TRUSTED_CERT_VARIABLE, SnsVerifier, canonical
from notifier.store import Store
from notifier.web.bounce_hook import TOPICS_VARIABLE
from tests.certificates import new_key, self_signed
from tests.conftest import Project, SmtpServer
from tests.record_fixtures import SOC
from tests.test_bounces import JANE, envelope_of, example, statuses
from tests.test_web import Servers, servers

__all__ = ["example", "servers"]  # fixtures
TOPIC = "arn:aws:sns:eu-west-2:123456789012:ses-bounces"


def _certificate(key: rsa.RSAPrivateKey) -> bytes:
    """The signer's certificate as PEM, what the notification's ``SigningCertURL`` serves."""
    return self_signed(key, "sns.test").public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def signer() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture
def cert_url(signer: rsa.RSAPrivateKey) -> Iterator[str]:
    """The URL of the signer's certificate, served over HTTP on loopback."""
    pem = _certificate(signer)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-pem-file")
            self.end_headers()
            self.wfile.write(pem)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/SimpleNotificationService-test.pem"
    server.shutdown()
    server.server_close()


def notification(source: str, recipient: str, cert_url: str, *, bounce_type: str = "Permanent") -> dict[str, Any]:
    ses = {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": recipient, "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1"}],
        },
        "mail": {"source": source, "messageId": "0100018c-ses", "destination": [recipient]},
    }
    return {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": TOPIC,
        "Message": json.dumps(ses),
        "Timestamp": "2019-07-10T09:00:00.000Z",
        "SignatureVersion": "2",
        "SigningCertURL": cert_url,
    }


def signed(message: dict[str, Any], key: rsa.RSAPrivateKey) -> dict[str, Any]:
    signature = key.sign(canonical(message), padding.PKCS1v15(), hashes.SHA256())
    return {**message, "Signature": base64.b64encode(signature).decode()}


@pytest.fixture
def web(example: Project, servers: Servers, cert_url: str, smtp_server: SmtpServer) -> str:
    """A live ``notifier web`` on the example, after its ``opened`` went out."""
    example.run("send", SOC, "opened", "--wait", check=True)
    settings = Settings(
        config_dir=example.config,
        data_dir=example.data,
        redis_url=example.env["NOTIFIER_REDIS_URL"],
        public_url="https://notify.pcc.example",
        web_bind="127.0.0.1:0",
        secret_key_env=example.env["NOTIFIER_SECRET_KEY"],
        env={TRUSTED_CERT_VARIABLE: cert_url.rsplit("/", 1)[0] + "/", TOPICS_VARIABLE: TOPIC},
    )
    return servers.start(settings)


def test_a_signed_ses_bounce_marks_the_delivery_bounced_and_suppresses_the_address(
    web: str, example: Project, smtp_server: SmtpServer, signer: rsa.RSAPrivateKey, cert_url: str
) -> None:
    message = signed(notification(envelope_of(smtp_server, JANE), JANE, cert_url), signer)
    response = httpx.post(f"{web}/api/bounces", content=json.dumps(message), timeout=10)
    assert response.status_code == 200 and response.json() == {"recorded": "bounced"}
    assert statuses(example)[("opened", "email", JANE)] == "bounced"

    example.run("send", SOC, "reminder", "--early", "--wait", check=True)
    assert statuses(example)[("reminder", "email", JANE)] == "suppressed"


def queue_again(example: Project, recipient: str) -> tuple[redis.Redis, str]:
    """Take ``recipient``'s ``opened`` outcome out of the record and queue it for archiving
    again, as it is a moment after it settled; (the Redis client, the occurrence id)."""
    client = redis.Redis.from_url(example.env["NOTIFIER_REDIS_URL"])
    occurrence = Ledger(client).fired(SOC, "opened")
    assert occurrence is not None
    store = Store.open(Settings.from_env(example.env))
    with store.engine.begin() as connection:
        connection.execute(
            text("DELETE FROM deliveries WHERE occurrence = :o AND recipient = :r"), {"o": occurrence, "r": recipient}
        )
    store.close()
    client.rpush(f"{NAMESPACE}:arc:{occurrence}", f"email|{recipient}")
    client.sadd(f"{NAMESPACE}:arcq", occurrence)
    return client, occurrence


def test_a_bounce_arriving_before_its_outcome_is_archived_waits_for_it(
    web: str, example: Project, smtp_server: SmtpServer, signer: rsa.RSAPrivateKey, cert_url: str
) -> None:
    queue_again(example, JANE)
    message = signed(notification(envelope_of(smtp_server, JANE), JANE, cert_url), signer)
    response = httpx.post(f"{web}/api/bounces", content=json.dumps(message), timeout=30)
    assert response.status_code == 200 and response.json() == {"recorded": "bounced"}
    assert statuses(example)[("opened", "email", JANE)] == "bounced"


def test_a_bounce_whose_outcome_cannot_be_archived_yet_is_a_503_so_sns_delivers_it_again(
    web: str, example: Project, smtp_server: SmtpServer, signer: rsa.RSAPrivateKey, cert_url: str
) -> None:
    client, occurrence = queue_again(example, JANE)
    client.set(f"{NAMESPACE}:arclock:{occurrence}", "another-archiver", px=60_000)  # busy elsewhere
    message = signed(notification(envelope_of(smtp_server, JANE), JANE, cert_url), signer)
    refused = httpx.post(f"{web}/api/bounces", content=json.dumps(message), timeout=30)
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
    assert "not in the record yet" in refused.json()["error"]

    client.delete(f"{NAMESPACE}:arclock:{occurrence}")  # that archiver died; SNS delivers it again
    again = httpx.post(f"{web}/api/bounces", content=json.dumps(message), timeout=30)
    assert again.status_code == 200 and again.json() == {"recorded": "bounced"}
    assert statuses(example)[("opened", "email", JANE)] == "bounced"


@pytest.mark.parametrize(
    "forge",
    ["unsigned", "another key", "altered after signing", "certificate off Amazon's hosts", "another topic", "not json"],
)
def test_a_forged_webhook_is_refused_and_changes_nothing(  # noqa: PLR0913 - pytest fixtures
    web: str, example: Project, smtp_server: SmtpServer, signer: rsa.RSAPrivateKey, cert_url: str, forge: str
) -> None:
    before = statuses(example)
    message = notification(envelope_of(smtp_server, JANE), JANE, cert_url)
    body: str
    if forge == "unsigned":
        body = json.dumps({k: v for k, v in message.items() if k != "SignatureVersion"})
    elif forge == "another key":
        body = json.dumps(signed(message, new_key()))
    elif forge == "altered after signing":
        good = signed(notification("bounces+x@elsewhere.example", JANE, cert_url), signer)
        body = json.dumps({**good, "Message": message["Message"]})
    elif forge == "certificate off Amazon's hosts":
        body = json.dumps(
            signed({**message, "SigningCertURL": "https://sns.eu-west-2.amazonaws.com.evil.example/c.pem"}, signer)
        )
    elif forge == "another topic":
        body = json.dumps(signed({**message, "TopicArn": "arn:aws:sns:eu-west-2:999999999999:mine"}, signer))
    else:
        body = "{not json"
    response = httpx.post(f"{web}/api/bounces", content=body, timeout=10)
    assert response.status_code in (400, 403) if forge == "not json" else response.status_code == 403
    assert statuses(example) == before
    assert len(smtp_server.handler.to(JANE)) == 1


@pytest.mark.parametrize(
    ("url", "trusted"),
    [
        ("https://sns.eu-west-2.amazonaws.com/SimpleNotificationService-abc.pem", True),
        ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem", True),
        ("http://sns.eu-west-2.amazonaws.com/SimpleNotificationService-abc.pem", False),
        ("https://sns.eu-west-2.amazonaws.com.evil.example/c.pem", False),
        ("https://evil.example/sns.eu-west-2.amazonaws.com/c.pem", False),
        ("https://sns.eu-west-2.amazonaws.com:8443/c.pem", False),
        ("http://127.0.0.1:1234/c.pem", False),
    ],
)
def test_signing_certificates_come_only_from_amazons_sns_hosts(url: str, trusted: bool) -> None:
    assert SnsVerifier().allowed(url) is trusted
