"""One error tree (sftp_pipeline/errors.py): every class in it with a template and an exit code, none outside
it, and every library exception that can reach an operator translated into one of ours."""

from __future__ import annotations

import ast
import errno
import inspect
import os
import smtplib
import sqlite3
import ssl
import string
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import asyncssh
import pysequoia
import pytest

from sftp_pipeline import errors
from sftp_pipeline.config import Partner
from sftp_pipeline.keys import _read_tsk, load_partner_cert
from sftp_pipeline.openpgp import packets
from sftp_pipeline.openpgp.signatures import verify_detached

PACKAGE = Path(errors.__file__).parent
TREE = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.PipelineError)]


def _subclasses(root: type) -> set[type]:
    found = {root}
    for sub in root.__subclasses__():
        found |= _subclasses(sub)
    return found


def test_no_exception_class_lives_outside_the_tree() -> None:
    """An exception class anywhere else is private to its module (``_Name``) and never leaves it."""
    stray = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases}
                if bases & {"Exception", "BaseException", "ValueError", "RuntimeError", "OSError"} or any(
                    b.endswith(("Error", "Exception")) for b in bases
                ):
                    stray.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert stray == []
    assert set(TREE) == _subclasses(errors.PipelineError) - {
        c for c in _subclasses(errors.PipelineError) if c.__module__ != errors.__name__
    }


@pytest.mark.parametrize("cls", TREE, ids=lambda c: c.__name__)
def test_every_class_has_its_exit_code_a_template_and_a_line_in_the_tree(cls: type[errors.PipelineError]) -> None:
    assert cls.exit_code in (errors.EXIT_FAILED, errors.EXIT_USAGE)
    assert cls.__doc__ and f" {cls.__name__} " in errors.__doc__  # type: ignore[operator]
    row = next(line for line in errors.__doc__.splitlines() if f" {cls.__name__} " in line)  # type: ignore[union-attr]
    assert f"exit {cls.exit_code}" in row
    fields = [name for _, name, _, _ in string.Formatter().parse(cls.template) if name]
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    samples: dict[str, object] = {}
    for param in params:
        if param.kind is param.VAR_KEYWORD:
            samples.update({f: f"<{f}>" for f in fields if f != "detail"})
        elif param.name == "refused":
            samples[param.name] = {"a@example.com": (550, "no such user")}
        elif param.name == "offset":
            samples[param.name] = 4711
        elif param.name in ("status", "reason"):
            samples[param.name] = "unsigned"
        else:
            samples[param.name] = f"<{param.name}>"
    positional = [samples.pop(p.name) for p in params if p.kind is p.POSITIONAL_ONLY]
    error = cls(*positional, **samples)
    message = str(error)
    for field in fields:
        value = error.detail if field == "detail" else error.fields[field]
        assert str(value) in message, (field, message)
    assert message == cls.template.format(detail=error.detail, **error.fields)


def _instance(cls: type[BaseException]) -> BaseException:
    """An instance of a library's exception class, whatever its constructor wants."""
    kwargs: dict[str, object] = {}
    try:
        parameters = inspect.signature(cls).parameters
    except ValueError:  # a C type (sqlite3, ssl, socket): built from a message
        return cls("why")
    for name, param in parameters.items():
        if param.default is not param.empty or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        kwargs[name] = {
            "code": 1,
            "reason": "why",
            "msg": "why",
            "smtp_code": 451,
            "smtp_error": b"later",
            "recipients": {"a@example.com": (550, b"no")},
            "sender": "us@example.com",
        }.get(name)
    return cls(**kwargs)


LIBRARY_ROOTS = [asyncssh.Error, smtplib.SMTPException, sqlite3.Error, OSError]


@pytest.mark.parametrize(
    "cls",
    sorted(
        {
            c
            for root in LIBRARY_ROOTS
            for c in _subclasses(root)
            if c.__module__.split(".")[0] in ("asyncssh", "smtplib", "sqlite3", "builtins", "ssl", "socket")
        },
        key=lambda c: (c.__module__, c.__name__),
    ),
    ids=lambda c: f"{c.__module__}.{c.__name__}",
)
def test_every_library_exception_is_translated(cls: type[BaseException]) -> None:
    error = errors.translate(_instance(cls))
    assert isinstance(error, errors.PipelineError) and str(error)


@pytest.mark.parametrize(
    ("exc", "expected", "words"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/srv/state/work/x"),
            errors.DiskFullError,
            "/srv/state/work",
        ),
        (PermissionError(errno.EACCES, "Permission denied", "/srv/drop"), errors.LocalFileError, "/srv/drop"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/etc/passwd/x"), errors.LocalFileError, "Not a dir"),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), errors.TransientTransportError, "reset"),
        (sqlite3.OperationalError("database is locked"), errors.LedgerError, "database is locked"),
        (smtplib.SMTPResponseException(421, b"try later"), errors.MailTemporaryError, "421"),
        (smtplib.SMTPResponseException(554, b"rejected"), errors.MailPermanentError, "554"),
        (smtplib.SMTPServerDisconnected("gone"), errors.MailTemporaryError, "gone"),
        (ssl.SSLError(1, "certificate verify failed"), errors.TransientTransportError, "TLS"),
        (asyncssh.HostKeyNotVerifiable("bad key"), errors.HostKeyError, "pinned"),
        (asyncssh.PermissionDenied("no"), errors.PermanentTransportError, "refused"),
        (asyncssh.SFTPNoSuchFile("gone"), errors.PermanentTransportError, "gone"),
        (asyncssh.SFTPNoSpaceOnFilesystem("full"), errors.TransientTransportError, "out of space"),
        (asyncssh.ConnectionLost("lost"), errors.TransientTransportError, "lost"),
    ],
)
def test_what_each_library_exception_means(exc: BaseException, expected: type, words: str) -> None:
    error = errors.translate(exc)
    assert type(error) is expected and words in str(error)


def test_a_bug_is_not_dressed_up_as_one_of_ours() -> None:
    assert errors.translate(KeyError("x")) is None and errors.translate(RuntimeError("x")) is None
    mine = errors.ConfigError("x")
    assert errors.translate(mine) is mine


# -- pysequoia raises bare RuntimeError/ValueError: every entry point translates what hostile input makes it raise


GARBAGE = [
    b"",
    b"\x00" * 10,
    b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64\n-----END PGP PUBLIC KEY BLOCK-----\n",
    bytes(range(256)),
    b"\x99\x01\x0d" + b"\xff" * 300,
]


@pytest.mark.parametrize("data", GARBAGE)
def test_hostile_key_and_signature_bytes_become_our_errors(tmp_path: Path, data: bytes) -> None:
    cert_path = tmp_path / "partner.asc"
    cert_path.write_bytes(data)
    partner = Partner(id="utility", name="U", openpgp_cert=cert_path, send=["invoice"], receive=[])
    with pytest.raises(errors.KeyFileError):
        load_partner_cert(partner)
    secret = tmp_path / "openpgp.key"
    secret.write_bytes(data)
    secret.chmod(0o600)
    with pytest.raises(errors.KeyFileError):
        _read_tsk(secret)
    signer = pysequoia.Tsk.generate("Signer").extract_certificate()
    with pytest.raises(errors.SignatureRefused):
        verify_detached(b"document", data, signer, now=datetime.now(UTC))
    with pytest.raises(errors.PacketError):
        list(packets.walk_bytes(data or b"\x00"))


def test_a_library_exception_reaches_the_operator_as_one_line_not_a_traceback(tmp_path: Path) -> None:
    """`keys generate --directory` under a regular file: NotADirectoryError from deep in the key writer (it was a
    42-line traceback); now one line naming the path, exit 1."""
    (tmp_path / "blocker").write_text("a file, not a folder")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sftp_pipeline.cli",
            "keys",
            "generate",
            "--directory",
            str(tmp_path / "blocker" / "keys"),
            "--party-id",
            "aggregator",
            "--name",
            "A",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "error:" in done.stderr and "blocker" in done.stderr
