"""The benchmark's laboratory: a throw-away sshd, GnuPG homes, our parties, and a way to time a process.

Everything lives under one scratch directory and uses the *same* keys on both sides of the comparison:
our party's OpenPGP key is imported into a GnuPG home for the shell baseline, its SSH identity is the one
``sftp`` logs in with, and the partner is a GnuPG-made ed25519/cv25519 key (RFC 4880, SEIPDv1), so our
pipeline and ``gpg`` encrypt to the very same certificate.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sftp_pipeline.names import new_transfer_id, sealed_name
from tests.peers.gpg import GnuPG
from tests.peers.parties import Party, make_party
from tests.peers.sshd import Sshd, start_sshd

# Why 1 h: a 1 GiB run takes well under a minute here; an hour means something hung, not that it is slow.
STEP_TIMEOUT = 3600.0
PARTNER_UID = "Metro Utility <settlement@utility.test>"
# Remote folders on the sshd, as the party's default RemoteDirs names them (plus the SEIPDv2 pair's outbox).
REMOTE_DIRS = ("inbox", "outbox", "receipts-in", "receipts-out", "outbox-v2")


@dataclass(frozen=True)
class Sample:
    """One measured process (or a sequence of processes, for the shell baseline)."""

    seconds: float
    peak_rss_kib: int  # the largest resident set of any process in the step, as the kernel reports it
    cpu_seconds: float = 0.0  # user + system CPU of the process and every child it waited for

    def __add__(self, other: Sample) -> Sample:
        return Sample(
            self.seconds + other.seconds,
            max(self.peak_rss_kib, other.peak_rss_kib),
            self.cpu_seconds + other.cpu_seconds,
        )


TIME = shutil.which("time", path="/usr/bin:/bin")  # GNU time (apt-get install time): the child's own peak RSS


def measure(cmd: list[str], *, env: dict[str, str] | None = None, log: Path | None = None) -> Sample:
    """Run ``cmd`` to completion; its wall time and peak RSS (the largest of it and the children it waited for).

    GNU ``time -f %M`` reports the peak of the process it runs; without it, ``wait4`` does, but a child forked
    from this (large) Python process may be charged the parent's pages until it execs. Fails loudly on a
    non-zero exit: a benchmark of a failing run measures nothing.
    """
    report = Path(tempfile.mkstemp(prefix="bench-time-")[1])
    argv = [TIME, "-q", "-f", "%M", "-o", str(report), *cmd] if TIME else cmd
    sink = log.open("ab") if log else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=sink, stderr=sink, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        text = report.read_text().strip()
    finally:
        report.unlink(missing_ok=True)
        if log:
            sink.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log else ""
        raise RuntimeError(f"{' '.join(cmd[:6])}… exited {proc.returncode}\n{tail}")
    peak = int(text.splitlines()[-1]) if TIME and text else int(usage.ru_maxrss)  # both in KiB on Linux
    # wait4's usage covers the child and every descendant it waited for (GNU time, our CLI, gpg, sftp).
    return Sample(seconds, peak, usage.ru_utime + usage.ru_stime)


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of a running process and of the children it has reaped (sshd and its finished sessions)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime, stime, cutime, cstime


@dataclass
class Lab:
    base: Path
    sshd: Sshd
    party: Party  # ours, pointing at sshd as the partner's server
    partner_gpg: GnuPG  # the partner's own GnuPG home (its secret key, our certificate)
    partner_fpr: str
    our_gpg: GnuPG  # our key imported into GnuPG, for the shell baseline
    our_fpr: str
    known_hosts: Path
    log: Path
    extra: dict[str, Party] = field(default_factory=dict)

    # -- our side -------------------------------------------------------------------------------

    def cli(self, party: Party, *args: str) -> list[str]:
        return [sys.executable, "-m", "sftp_pipeline.cli", "-c", str(party.config_path), *args]

    def env(self) -> dict[str, str]:
        return {**os.environ, "COLUMNS": "200"}

    @property
    def sshd_pid(self) -> int:
        assert self.sshd.process is not None, "the lab's sshd is not running"
        return self.sshd.process.pid

    # -- the shell baseline -----------------------------------------------------------------------

    def gpg_cmd(self, *args: str) -> list[str]:
        return [self.our_gpg.executable, "--homedir", str(self.our_gpg.home), "--batch", "--yes", *args]

    def gpg_seal(self, src: Path | str, dst: Path | str) -> list[str]:
        """The baseline's seal, exactly as the issue writes it (GnuPG's defaults, so compression on)."""
        return self.gpg_cmd(
            "--trust-model", "always", "-r", self.partner_fpr, "-u", self.our_fpr, "--sign", "--encrypt",
            "-o", str(dst), str(src),
        )  # fmt: skip

    def gpg_open(self, src: Path, dst: Path) -> list[str]:
        return self.gpg_cmd("--trust-model", "always", "-o", str(dst), "--decrypt", str(src))

    def sftp_batch(self, lines: list[str], name: str) -> list[str]:
        batch = self.base / f"{name}.sftp"
        batch.write_text("\n".join(lines) + "\n")
        return [
            "sftp", "-q", "-b", str(batch), "-i", str(self.party.keys.ssh_private), "-P", str(self.sshd.port),
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", f"{self.sshd.user}@{self.sshd.host}",
        ]  # fmt: skip

    # -- housekeeping -----------------------------------------------------------------------------

    def clear_remote(self) -> None:
        for name in REMOTE_DIRS:
            folder = self.sshd.root / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()

    def clear_state(self, party: Party) -> None:
        """Drop archives and work files between runs (a 1 GiB run leaves ~3 GiB behind); keep the ledger."""
        state = party.config().state_dir
        for sub in ("archive", "work", "received", "quarantine"):
            shutil.rmtree(state / sub, ignore_errors=True)
        shutil.rmtree(party.directory / "received", ignore_errors=True)

    def place_for_collect(self, sealed: Path, folder: str = "outbox", original: str = "x.csv") -> str:
        """Put a sealed message in the partner's outbox under a valid sealed name; return that name."""
        from sftp_pipeline.clock import utc_now

        name = str(sealed_name(new_transfer_id(utc_now()), "aggregation_data", original))
        shutil.copyfile(sealed, self.sshd.root / folder / name)
        return name

    def stop(self) -> None:
        self.sshd.stop()
        for peer in (self.partner_gpg, self.our_gpg):
            subprocess.run(
                ["gpgconf", "--homedir", str(peer.home), "--kill", "gpg-agent"], capture_output=True, check=False
            )


def _sftp_settings(sshd: Sshd, **extra: object) -> dict[str, object]:
    return {
        "host": sshd.host,
        "port": sshd.port,
        "user": sshd.user,
        "host_keys": [sshd.host_key_line],
        "connect_timeout": 30,
        **extra,
    }


def _append(party: Party, text: str) -> None:
    with party.config_path.open("a") as fh:
        fh.write(text)


def open_lab(base: Path, *, stable_seconds: float) -> Lab:
    """Start sshd, make the partner's GnuPG key and our party (send, collect and a watched job)."""
    base.mkdir(parents=True, exist_ok=True)
    sshd = start_sshd(base / "sshd")
    try:
        partner_gpg = GnuPG(shutil.which("gpg") or "gpg", base / "gnupg-partner")
        partner_fpr = partner_gpg.generate(PARTNER_UID)
        jobs: dict[str, dict[str, object]] = {
            "large": {"document_type": "aggregation_data"},
            "small": {"document_type": "invoice"},
            "watched": {"document_type": "transaction_confirmation", "watch": True, "stable_seconds": stable_seconds},
            "collect": {"kind": "collect", "deliver_to": "../received"},
        }
        party = make_party(
            base / "aggregator",
            "aggregator",
            partner_id="utility",
            partner_cert=partner_gpg.export(partner_fpr),
            sftp=_sftp_settings(sshd),
            jobs=jobs,
        )
        sshd.authorize(party.keys.ssh_public.read_text())
        partner_gpg.import_key(party.keys.openpgp_cert)
        our_gpg = GnuPG(partner_gpg.executable, base / "gnupg-ours")
        our_gpg.import_key(party.keys.openpgp_key)  # the same secret key our pipeline signs and decrypts with
        our_gpg.import_key(partner_gpg.export(partner_fpr))
        known_hosts = base / "known_hosts"
        known_hosts.write_text(sshd.host_key_line + "\n")
        lab = Lab(
            base=base,
            sshd=sshd,
            party=party,
            partner_gpg=partner_gpg,
            partner_fpr=partner_fpr,
            our_gpg=our_gpg,
            our_fpr=party.keys.openpgp_fingerprint.upper(),
            known_hosts=known_hosts,
            log=base / "bench.log",
        )
        lab.clear_remote()
        return lab
    except BaseException:
        sshd.stop()
        raise


def add_sequoia_pair(lab: Lab) -> tuple[Party, Party]:
    """Two parties of ours (Sequoia keys, SEIPDv2 between them): a sender pushing into ``outbox-v2`` and a receiver."""
    import tempfile

    scratch = Path(tempfile.mkdtemp(dir=lab.base, prefix="v2-"))
    # Certificates must exist before each party names the other: make the sender with a placeholder first.
    receiver = make_party(
        scratch / "receiver",
        "aggregator",
        partner_id="utility",
        partner_cert=lab.party.keys.openpgp_cert.read_bytes(),  # replaced below
        sftp=_sftp_settings(lab.sshd),
        jobs={"collect": {"kind": "collect", "deliver_to": "../received"}},
    )
    sender = make_party(
        scratch / "sender",
        "utility",
        partner_id="aggregator",
        partner_cert=receiver.keys.openpgp_cert.read_bytes(),
        sftp=_sftp_settings(lab.sshd),
        jobs={"large": {"document_type": "aggregation_data"}},
    )
    (receiver.directory / "keys" / "partners" / "utility.asc").write_bytes(sender.keys.openpgp_cert.read_bytes())
    _append(sender, '\n[partners.aggregator.sftp.dirs]\ninbox = "outbox-v2"\n')
    _append(receiver, '\n[partners.utility.sftp.dirs]\noutbox = "outbox-v2"\n')
    for party in (sender, receiver):
        lab.sshd.authorize(party.keys.ssh_public.read_text())
    return sender, receiver
