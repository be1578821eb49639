"""GnuPG as an independent OpenPGP peer: the "GnuPG partner" in interop tests.

``gpg`` gives a :class:`GnuPG` around a throw-away GNUPGHOME under ``tmp_path``.
Every call runs in batch mode with an empty passphrase and loopback pinentry,
and reports its ``--status-fd`` lines, because GnuPG's exit code says little.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_tool

# Why 60 s: RSA-4096 generation on a slow CI runner takes a few seconds; a minute means it hung.
GPG_TIMEOUT = 60.0


@dataclass(frozen=True)
class GpgResult:
    returncode: int
    stdout: bytes
    stderr: str
    status: list[str]  # "[GNUPG:] " stripped, e.g. "VALIDSIG <fpr> ..."

    def has(self, keyword: str) -> bool:
        return any(line.split()[0] == keyword for line in self.status if line)

    def lines(self, keyword: str) -> list[list[str]]:
        return [line.split() for line in self.status if line and line.split()[0] == keyword]


class GnuPG:
    """A small driver for one throw-away GnuPG home."""

    def __init__(self, executable: str, home: Path) -> None:
        self.executable = executable
        self.home = home
        home.mkdir(mode=0o700, parents=True, exist_ok=True)

    def run(self, *args: str, input: bytes | None = None, check: bool = True, passphrase: str = "") -> GpgResult:
        status_r, status_w = os.pipe()
        cmd = [
            self.executable,
            "--homedir",
            str(self.home),
            "--batch",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            passphrase,
            "--status-fd",
            str(status_w),
            *args,
        ]
        try:
            proc = subprocess.run(
                cmd,
                input=input,
                capture_output=True,
                timeout=GPG_TIMEOUT,
                pass_fds=(status_w,),
                check=False,
            )
        finally:
            os.close(status_w)
        with os.fdopen(status_r, "rb") as fh:
            raw = fh.read().decode("utf-8", "replace")
        status = [line.removeprefix("[GNUPG:] ") for line in raw.splitlines() if line.startswith("[GNUPG:] ")]
        result = GpgResult(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"), status)
        if check and proc.returncode != 0:
            raise AssertionError(f"gpg {' '.join(args)} failed ({proc.returncode}): {result.stderr}")
        return result

    # ------------------------------------------------------------------------------------------ keys

    def generate(
        self,
        uid: str = "GnuPG Partner <partner@example.test>",
        *,
        algo: str = "ed25519",
        sub_algo: str | None = "cv25519",
        usage: str = "cert,sign",
        expire: str = "2y",
        faked_time: str | None = None,
        passphrase: str = "",
    ) -> str:
        """Make a key (primary ``algo``, optional encryption subkey ``sub_algo``); return its fingerprint.

        ``algo`` may be "rsa3072" etc.; ``faked_time`` ("20200101T000000") backdates creation so that
        a short ``expire`` yields an already-expired key.
        """
        extra = ["--faked-system-time", faked_time] if faked_time else []
        self.run(*extra, "--quick-generate-key", uid, algo, usage, expire, passphrase=passphrase)
        fpr = self.fingerprint(uid)
        if sub_algo:
            self.run(*extra, "--quick-add-key", fpr, sub_algo, "encr", expire, passphrase=passphrase)
        return fpr

    def fingerprint(self, query: str) -> str:
        out = self.run("--with-colons", "--list-keys", query).stdout.decode()
        fprs = [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")]
        return fprs[0]

    def export(self, fpr: str, *, armor: bool = True) -> bytes:
        return self.run(*(["--armor"] if armor else []), "--export", fpr).stdout

    def export_secret(self, fpr: str, *, passphrase: str = "", armor: bool = True) -> bytes:
        return self.run(*(["--armor"] if armor else []), "--export-secret-keys", fpr, passphrase=passphrase).stdout

    def import_key(self, data: bytes | Path) -> GpgResult:
        if isinstance(data, Path):
            return self.run("--import", str(data))
        return self.run("--import", input=data)

    def set_prefs(self, fpr: str, prefs: str) -> None:
        """Change the algorithm preferences advertised by the key (e.g. "AES CAST5 SHA256 ZLIB")."""
        self.run("--command-fd", "0", "--edit-key", fpr, input=f"setpref {prefs}\ny\nsave\n".encode())

    def revoke(self, fpr: str) -> bytes:
        """Revoke the key and return its revoked public cert (armored).

        ``--gen-revoke`` refuses batch mode, so this imports the revocation certificate GnuPG 2.2
        stored at generation time (openpgp-revocs.d), after removing the ':' that disarms it.
        """
        stored = self.home / "openpgp-revocs.d" / f"{fpr.upper()}.rev"
        text = stored.read_text().replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----BEGIN PGP PUBLIC KEY BLOCK-----"
        )
        self.import_key(text.encode())
        return self.export(fpr)

    # -------------------------------------------------------------------------------------- messages

    def decrypt(self, path: Path, *extra: str) -> tuple[bytes, list[str]]:
        """Decrypt (and verify) ``path``; returns plaintext and status lines. Never trust the exit code."""
        result = self.run(*extra, "--decrypt", str(path), check=False)
        return result.stdout, result.status

    def sign_encrypt(
        self,
        src: Path,
        dst: Path,
        recipient_fpr: str,
        *,
        signer_fpr: str | None = None,
        extra: Sequence[str] = (),
        armor: bool = False,
    ) -> GpgResult:
        """``gpg --sign --encrypt`` with GnuPG's defaults (compression on) unless ``extra`` says otherwise."""
        args = ["--yes", "--trust-model", "always", "--output", str(dst), "--recipient", recipient_fpr]
        if signer_fpr:
            args += ["--local-user", signer_fpr]
        if armor:
            args.append("--armor")
        return self.run(*args, *extra, "--sign", "--encrypt", str(src))

    def list_packets(self, path: Path) -> str:
        result = self.run("--list-packets", str(path), check=False)
        return result.stdout.decode("utf-8", "replace") + result.stderr


@pytest.fixture
def gpg(tmp_path: Path) -> Iterator[GnuPG]:
    executable = require_tool("gpg")
    peer = GnuPG(executable, tmp_path / "gnupg")
    yield peer
    # The agent GnuPG started for this home would outlive the test; stop it (this home's only).
    gpgconf = shutil.which("gpgconf")
    if gpgconf:
        subprocess.run(
            [gpgconf, "--homedir", str(peer.home), "--kill", "gpg-agent"],
            capture_output=True,
            timeout=GPG_TIMEOUT,
            check=False,
        )
