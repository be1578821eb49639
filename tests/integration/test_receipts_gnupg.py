"""The receipt recipe in docs/receipts.md, run literally with bash and GnuPG, must yield receipts we accept."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pysequoia
import pytest

from sftp_pipeline.errors import ReceiptInvalid
from sftp_pipeline.names import new_transfer_id, sealed_name
from sftp_pipeline.proof.receipts import receipt_file_names, verify_receipt
from tests.conftest import require_tool
from tests.peers.gpg import GnuPG

DOC = Path(__file__).resolve().parents[2] / "docs" / "receipts.md"
RECIPE_RE = re.compile(r"^(?P<indent> *)```sh receipt-recipe\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)
# Why 60 s: the recipe is a handful of coreutils calls and one gpg signature; a minute means it hung.
RECIPE_TIMEOUT = 60.0
SENDER, RECEIVER = "aggregator", "utility"


def _recipe() -> str:
    blocks = [textwrap.dedent(m.group("body")) for m in RECIPE_RE.finditer(DOC.read_text(encoding="utf-8"))]
    assert blocks, f"{DOC} has no ```sh receipt-recipe block"
    return "\n".join(blocks)


def _run_recipe(gpg: GnuPG, workdir: Path, env: dict[str, str]) -> dict[str, bytes]:
    bash = require_tool("bash")
    script = workdir / "recipe.sh"
    script.write_text(_recipe(), encoding="utf-8")
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GNUPGHOME": str(gpg.home),
        "LC_ALL": "C.UTF-8",
        "OUT_DIR": str(workdir),
        **env,
    }
    proc = subprocess.run(
        [bash, str(script)], env=full_env, cwd=workdir, capture_output=True, timeout=RECIPE_TIMEOUT, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    json_path = Path(proc.stdout.decode().strip())
    return {json_path.name: json_path.read_bytes(), f"{json_path.name}.sig": Path(f"{json_path}.sig").read_bytes()}


@pytest.fixture
def received(tmp_path: Path) -> Path:
    """A file as a receiver holds it: the remote name, some bytes, complete at a known millisecond."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = inbox / str(sealed_name(new_transfer_id(datetime.now(UTC)), "invoice", "INV-2026-0042.xml"))
    path.write_bytes(os.urandom(3000))
    complete = datetime.now(UTC).replace(microsecond=456000) - timedelta(minutes=2)
    os.utime(path, ns=(int(complete.timestamp()) * 10**9 + 456_000_000,) * 2)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_accepted_receipt_from_recipe_verifies(gpg: GnuPG, tmp_path: Path, received: Path) -> None:
    receiver_fpr = gpg.generate("Utility <edm@utility.example>", sub_algo=None)
    plaintext = tmp_path / "document.plain"
    plaintext.write_bytes(b"<invoice>42</invoice>\n")
    sender_fpr = "0123456789ABCDEF0123456789ABCDEF01234567"
    detail = 'verified "ok" \\ prüfung'
    files = _run_recipe(
        gpg,
        tmp_path,
        {
            "RECEIVED_FILE": str(received),
            "SENDER": SENDER,
            "RECEIVER": RECEIVER,
            "STATUS": "ok",
            "PLAINTEXT_FILE": str(plaintext),
            "SENDER_FPR": sender_fpr,
            "DETAIL": detail,
            "SIGNER": receiver_fpr,
        },
    )
    transfer_id = received.name.split(".")[0]
    assert list(files) == list(receipt_file_names(transfer_id))
    cert = pysequoia.Cert.from_bytes(gpg.export(receiver_fpr))
    got = verify_receipt(
        files, issuer_cert=cert, now=datetime.now(UTC), expected_sender=SENDER, expected_receiver=RECEIVER
    )
    assert got.transfer_id == transfer_id
    assert (got.document_type, got.remote_name) == ("invoice", received.name)
    assert (got.sender, got.receiver) == (SENDER, RECEIVER)
    assert (got.disposition, got.status, got.detail) == ("accepted", "ok", detail)
    assert got.ciphertext_sha256 == _sha256(received)
    assert got.ciphertext_size == 3000
    assert got.plaintext_sha256 == _sha256(plaintext)
    assert got.sender_key_fingerprint == sender_fpr.lower()
    mtime_ns = received.stat().st_mtime_ns
    millis = mtime_ns // 10**6 % 1000 * 1000
    assert got.received_at == datetime.fromtimestamp(mtime_ns // 10**9, UTC).replace(microsecond=millis)
    assert got.received_at.microsecond == 456000
    assert got.received_at <= got.validated_at <= datetime.now(UTC)
    assert got.issuer_software == "gnupg-shell-recipe"


def test_rejected_receipt_from_recipe_verifies(gpg: GnuPG, tmp_path: Path, received: Path) -> None:
    receiver_fpr = gpg.generate("Utility <edm@utility.example>", algo="rsa3072", sub_algo=None)
    files = _run_recipe(
        gpg,
        tmp_path,
        {
            "RECEIVED_FILE": str(received),
            "SENDER": SENDER,
            "RECEIVER": RECEIVER,
            "STATUS": "unknown-signer",
            "RECEIVED_AT": "2026-01-02T03:04:05.678Z",
        },
    )
    cert = pysequoia.Cert.from_bytes(gpg.export(receiver_fpr))
    got = verify_receipt(
        files, issuer_cert=cert, now=datetime.now(UTC), expected_sender=SENDER, expected_receiver=RECEIVER
    )
    assert (got.disposition, got.status, got.plaintext_sha256, got.sender_key_fingerprint, got.detail) == (
        "rejected",
        "unknown-signer",
        None,
        None,
        "",
    )
    assert got.received_at == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert got.ciphertext_sha256 == _sha256(received)


def test_recipe_receipt_signed_by_another_gpg_key_is_wrong_signer(gpg: GnuPG, tmp_path: Path, received: Path) -> None:
    receiver_fpr = gpg.generate("Utility <edm@utility.example>", sub_algo=None)
    intruder_fpr = gpg.generate("Intruder <x@intruder.example>", sub_algo=None)
    files = _run_recipe(
        gpg,
        tmp_path,
        {
            "RECEIVED_FILE": str(received),
            "SENDER": SENDER,
            "RECEIVER": RECEIVER,
            "STATUS": "decryption-failed",
            "SIGNER": intruder_fpr,
        },
    )
    cert = pysequoia.Cert.from_bytes(gpg.export(receiver_fpr))
    with pytest.raises(ReceiptInvalid) as caught:
        verify_receipt(
            files, issuer_cert=cert, now=datetime.now(UTC), expected_sender=SENDER, expected_receiver=RECEIVER
        )
    assert caught.value.reason == "wrong-signer"


def test_armored_gpg_signature_is_refused(gpg: GnuPG, tmp_path: Path, received: Path) -> None:
    """The doc says "do not add --armor"; this shows why, with GnuPG's own output."""
    receiver_fpr = gpg.generate("Utility <edm@utility.example>", sub_algo=None)
    files = _run_recipe(
        gpg,
        tmp_path,
        {"RECEIVED_FILE": str(received), "SENDER": SENDER, "RECEIVER": RECEIVER, "STATUS": "malformed"},
    )
    json_name = next(iter(files))
    armored = gpg.run("--armor", "--local-user", receiver_fpr, "--detach-sign", input=files[json_name]).stdout
    cert = pysequoia.Cert.from_bytes(gpg.export(receiver_fpr))
    with pytest.raises(ReceiptInvalid, match="--armor") as caught:
        verify_receipt(
            {json_name: files[json_name], f"{json_name}.sig": armored},
            issuer_cert=cert,
            now=datetime.now(UTC),
            expected_sender=SENDER,
            expected_receiver=RECEIVER,
        )
    assert caught.value.reason == "bad-signature"


def test_recipe_is_documented_for_bash_only_tools() -> None:
    """The recipe promises GnuPG + coreutils, no jq."""
    recipe = _recipe()
    assert "jq" not in recipe.split()
    for tool in ("sha256sum", "stat", "date", "gpg"):
        assert tool in recipe


def _recipe_files(gpg: GnuPG, tmp_path: Path, received: Path) -> tuple[str, dict[str, bytes]]:
    files = _run_recipe(
        gpg,
        tmp_path,
        {"RECEIVED_FILE": str(received), "SENDER": SENDER, "RECEIVER": RECEIVER, "STATUS": "oversize"},
    )
    return next(iter(files)), files


def test_sha1_gpg_signature_is_refused(gpg: GnuPG, tmp_path: Path, received: Path) -> None:
    receiver_fpr = gpg.generate("Utility <edm@utility.example>", sub_algo=None)
    json_name, files = _recipe_files(gpg, tmp_path, received)
    weak = gpg.run("--digest-algo", "SHA1", "--local-user", receiver_fpr, "--detach-sign", input=files[json_name])
    cert = pysequoia.Cert.from_bytes(gpg.export(receiver_fpr))
    with pytest.raises(ReceiptInvalid, match="weak hash") as caught:
        verify_receipt(
            {json_name: files[json_name], f"{json_name}.sig": weak.stdout},
            issuer_cert=cert,
            now=datetime.now(UTC),
            expected_sender=SENDER,
            expected_receiver=RECEIVER,
        )
    assert caught.value.reason == "bad-signature"


def test_signature_by_a_since_expired_subkey_is_refused(gpg: GnuPG, tmp_path: Path, received: Path) -> None:
    """Sequoia accepts an old signature by a now-expired subkey; a receipt is judged by the key as it is now."""
    past = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y%m%dT%H%M%S")
    receiver_fpr = gpg.generate("Utility <edm@utility.example>", sub_algo=None, faked_time=past)
    gpg.run("--faked-system-time", past, "--quick-add-key", receiver_fpr, "ed25519", "sign", "1d")
    listing = gpg.run("--with-colons", "--list-keys", receiver_fpr).stdout.decode().splitlines()
    subkey = [line.split(":")[9] for line in listing if line.startswith("fpr:")][1]
    json_name = f"{received.name.split('.')[0]}.receipt.json"
    body = b"{}"  # content is never reached: the key check comes first
    sig = gpg.run("--faked-system-time", past, "--local-user", f"{subkey}!", "--detach-sign", input=body).stdout
    cert = pysequoia.Cert.from_bytes(gpg.export(receiver_fpr))
    with pytest.raises(ReceiptInvalid) as caught:
        verify_receipt(
            {json_name: body, f"{json_name}.sig": sig},
            issuer_cert=cert,
            now=datetime.now(UTC),
            expected_sender=SENDER,
            expected_receiver=RECEIVER,
        )
    assert caught.value.reason == "bad-signature"
    assert f"subkey {subkey.lower()}" in str(caught.value)
    assert "expired or revoked now" in str(caught.value)
