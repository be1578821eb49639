"""aiosmtpd as a real SMTP peer on 127.0.0.1, with a throw-away private CA.

The fixture ``smtp_peer_factory`` starts servers in background threads (aiosmtpd's ``Controller``) and
stops them at the end of the test. Modes:

* ``"starttls"`` — STARTTLS required before anything else, AUTH offered only after TLS;
* ``"tls"`` — implicit TLS from the first byte (port-465 style);
* ``"plain"`` — no TLS at all (a relay without STARTTLS).

Every mode accepts exactly one user (``SMTP_USER`` / ``SMTP_PASSWORD``) and answers 535 to anything else.
``rcpt_replies`` maps a recipient to the reply RCPT gets (e.g. ``"451 4.3.0 try later"``), and
``data_reply`` replaces the answer to DATA, to play a relay that refuses. The server certificate is for
127.0.0.1 and localhost, signed by a CA written to ``peer.ca_file`` (what ``[smtp] ca_file`` names).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Literal

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sftp_pipeline.config import Secret, Smtp

LOOPBACK = "127.0.0.1"
SMTP_USER = "reports@aggregator.example"
SMTP_PASSWORD = "s3cret-Pa55-for-smtp-only"  # tests assert it never shows in an error or a log line
SENDER = "sftp-pipeline@aggregator.example"
RECIPIENTS = ["settlement@aggregator.example", "controller@aggregator.example"]
PASSWORD_ENV = "TEST_SMTP_PASSWORD"
# Why 5 s: the peer answers in milliseconds; a test that waits longer is a hang, not a slow server.
TEST_TIMEOUT = 5.0

Mode = Literal["starttls", "tls", "plain"]


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None  # the authenticated user, None without AUTH
    tls: bool  # the message came over an encrypted connection

    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class RecordingHandler:
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    received: list[Received] = field(default_factory=list)
    auth_attempts: list[str] = field(default_factory=list)  # logins tried (user names only)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply is not None:
            return self.data_reply
        login = session.login_data.decode() if session.login_data else None
        tls = session.ssl is not None or server.transport.get_extra_info("sslcontext") is not None
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, login, tls))
        return "250 Message accepted for delivery"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        self.auth_attempts.append(auth_data.login.decode())
        ok = auth_data.login == SMTP_USER.encode() and auth_data.password == SMTP_PASSWORD.encode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


class _Port0Controller(Controller):  # type: ignore[misc]
    """aiosmtpd's Controller pokes its own port to finish start-up; learn the port 0 picked first."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass(frozen=True)
class TestCA:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def make_test_ca(directory: Path) -> TestCA:
    """A private CA and a server certificate for 127.0.0.1 / localhost it signed (valid for a day)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sftp-pipeline test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca = TestCA(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    ca.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca.key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ca.key_file.chmod(0o600)
    return ca


@dataclass
class SmtpPeer:
    mode: Mode
    ca: TestCA
    handler: RecordingHandler
    port: int = 0
    controller: Controller | None = None

    def start(self) -> SmtpPeer:
        """Start listening (on ``port``, or a free one the first time)."""
        assert self.controller is None, "already running"
        ctx = self.ca.server_context()
        kwargs: dict[str, Any] = {
            "hostname": LOOPBACK,
            "port": self.port,
            "server_hostname": "localhost",  # else aiosmtpd calls getfqdn(), a DNS lookup
            "authenticator": self.handler.authenticate,
            "ready_timeout": TEST_TIMEOUT,
        }
        if self.mode == "starttls":
            kwargs.update(tls_context=ctx, require_starttls=True, auth_require_tls=True)
        elif self.mode == "tls":
            # aiosmtpd only counts STARTTLS as TLS for AUTH; here the whole connection is TLS from the start.
            kwargs.update(ssl_context=ctx, auth_require_tls=False)
        else:
            kwargs.update(auth_require_tls=True)
        controller = _Port0Controller(self.handler, **kwargs)
        controller.start()
        self.port = controller.port
        self.controller = controller
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def smtp(self, **overrides: Any) -> Smtp:
        """An ``[smtp]`` section pointing at this peer, logging in as SMTP_USER (password from PASSWORD_ENV)."""
        security = {"starttls": "starttls", "tls": "tls", "plain": "starttls"}[self.mode]
        values: dict[str, Any] = {
            "host": LOOPBACK,
            "port": self.port,
            "security": security,
            "username": SMTP_USER,
            "password": Secret(env=PASSWORD_ENV),
            "ca_file": self.ca.ca_file,
            "sender": SENDER,
            "recipients": RECIPIENTS,
            "timeout": TEST_TIMEOUT,
        }
        values.update(overrides)
        return Smtp(**values)


SmtpPeerFactory = Callable[..., SmtpPeer]


@pytest.fixture
def smtp_ca(tmp_path: Path) -> TestCA:
    return make_test_ca(tmp_path / "smtp-ca")


@pytest.fixture
def smtp_peer_factory(smtp_ca: TestCA, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpPeerFactory]:
    """``factory(mode="starttls", rcpt_replies=None, data_reply=None, start=True, port=0) -> SmtpPeer``."""
    monkeypatch.setenv(PASSWORD_ENV, SMTP_PASSWORD)
    peers: list[SmtpPeer] = []

    def factory(
        mode: Mode = "starttls",
        *,
        rcpt_replies: dict[str, str] | None = None,
        data_reply: str | None = None,
        start: bool = True,
        port: int = 0,
    ) -> SmtpPeer:
        handler = RecordingHandler(rcpt_replies=dict(rcpt_replies or {}), data_reply=data_reply)
        peer = SmtpPeer(mode=mode, ca=smtp_ca, handler=handler, port=port)
        peers.append(peer)
        return peer.start() if start else peer

    yield factory
    for peer in peers:
        peer.stop()


@pytest.fixture
def smtp_peer(smtp_peer_factory: SmtpPeerFactory) -> SmtpPeer:
    """A running STARTTLS + AUTH server."""
    return smtp_peer_factory("starttls")
