"""OpenSSH ``sshd`` as a real SFTP peer, on 127.0.0.1 and a free port, with throwaway keys.

Fixtures:

* ``ssh_client_key`` — an ed25519 key pair made by asyncssh in ``tmp_path`` (private key 0600).
* ``sshd`` — a running sshd (SFTP only, public-key auth only) whose remote paths land in
  ``sshd.root``; the client key above is authorised already. Stopped at teardown.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from sftp_pipeline import config
from tests.conftest import require_tool

# Why 10 s: sshd starts in milliseconds; anything slower than this is broken, not busy.
SSHD_START_TIMEOUT = 10.0
# Why 5 s: sshd exits at once on SIGTERM; a hang beyond this is killed so the test run ends.
SSHD_STOP_TIMEOUT = 5.0
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without its privilege-separation directory


@dataclass(frozen=True)
class ClientKey:
    path: Path  # the private key, mode 0600
    public_line: str  # "ssh-ed25519 AAAA… comment"


def make_client_key(directory: Path, name: str = "id_ed25519") -> ClientKey:
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"sftp-pipeline-test-{name}")
    path = directory / name
    key.write_private_key(str(path))
    path.chmod(0o600)
    public_line = key.export_public_key().decode().strip()
    (directory / f"{name}.pub").write_text(public_line + "\n")
    return ClientKey(path=path, public_line=public_line)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SSHD_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {host}:{port} within {SSHD_START_TIMEOUT}s: {log.read_text()}")


@dataclass
class Sshd:
    host: str
    port: int
    user: str
    root: Path  # where relative remote paths land (ForceCommand internal-sftp -d)
    host_key_line: str  # known_hosts form: "[127.0.0.1]:PORT ssh-ed25519 AAAA…"
    host_key_fingerprint: str  # "SHA256:…"
    authorized_keys: Path
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def authorize(self, public_line: str) -> None:
        """Let the holder of ``public_line``'s private key log in."""
        with self.authorized_keys.open("a") as fh:
            fh.write(public_line.strip() + "\n")

    def endpoint(self, host_keys: list[str] | None = None, **overrides: Any) -> config.SftpEndpoint:
        """An endpoint for this sshd, pinned to its real host key unless ``host_keys`` says otherwise."""
        fields: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "host_keys": host_keys if host_keys is not None else [self.host_key_line],
        }
        fields.update(overrides)
        return config.SftpEndpoint(**fields)

    def kill(self) -> None:
        """SIGKILL sshd and every session process it forked (a crash or power cut of the server host)."""
        if self.process is None:
            return
        victims = [self.process.pid, *_descendants(self.process.pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def start_again(self) -> None:
        """Start sshd again on the same port with the same host key and configuration."""
        assert self.process is None, "stop() or kill() it first"
        self.process = _spawn(self.log.parent / "sshd_config", self.log)
        _wait_for_port(self.host, self.port, self.process, self.log)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=SSHD_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def _spawn(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    sshd_bin = require_tool("sshd", "/usr/sbin/sshd")
    with log.open("ab") as log_fh:
        return subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(cfg)], stdout=log_fh, stderr=subprocess.STDOUT)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (sshd forks one per connection, and that one its privilege-separated child)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def start_sshd(base: Path, extra_config: str = "") -> Sshd:
    """Start sshd under ``base`` (config, keys, log, root); the caller must ``stop()`` it."""
    require_tool("sshd", "/usr/sbin/sshd")
    etc = base / "etc"
    root = base / "root"
    etc.mkdir(parents=True)
    root.mkdir()
    host_key = asyncssh.generate_private_key("ssh-ed25519", comment="sftp-pipeline-test-host")
    host_key_path = etc / "ssh_host_ed25519_key"
    host_key.write_private_key(str(host_key_path))
    host_key_path.chmod(0o600)
    authorized_keys = etc / "authorized_keys"
    authorized_keys.touch(mode=0o600)
    if os.geteuid() == 0:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    user = getpass.getuser()
    host, port = "127.0.0.1", free_port()
    cfg = etc / "sshd_config"
    cfg.write_text(
        "\n".join(
            [
                f"ListenAddress {host}:{port}",
                f"HostKey {host_key_path}",
                f"PidFile {etc / 'sshd.pid'}",
                "UsePAM no",
                "StrictModes no",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "HostbasedAuthentication no",
                f"AuthorizedKeysFile {authorized_keys}",
                f"AllowUsers {user}",
                "PermitRootLogin prohibit-password" if os.geteuid() == 0 else "",
                "AllowTcpForwarding no",
                "X11Forwarding no",
                "LogLevel VERBOSE",
                "Subsystem sftp internal-sftp",
                f"ForceCommand internal-sftp -d {root}",
                extra_config,
                "",
            ]
        )
    )
    log = etc / "sshd.log"
    proc = _spawn(cfg, log)
    server = Sshd(
        host=host,
        port=port,
        user=user,
        root=root,
        host_key_line=f"[{host}]:{port} {host_key.export_public_key().decode().strip()}",
        host_key_fingerprint=host_key.get_fingerprint("sha256"),
        authorized_keys=authorized_keys,
        log=log,
        process=proc,
    )
    try:
        _wait_for_port(host, port, proc, log)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def ssh_client_key(tmp_path: Path) -> ClientKey:
    directory = tmp_path / "client-key"
    directory.mkdir()
    return make_client_key(directory)


@pytest.fixture
def sshd(tmp_path: Path, ssh_client_key: ClientKey) -> Iterator[Sshd]:
    server = start_sshd(tmp_path / "sshd")
    server.authorize(ssh_client_key.public_line)
    try:
        yield server
    finally:
        server.stop()
