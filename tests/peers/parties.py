"""Parties for end-to-end tests: a configuration folder with real keys, drop folders and a CLI runner.

``make_party`` writes an ``sftp-pipeline.toml`` (and job files) the way an operator would, so the tests
exercise config loading, key checks and the CLI exactly as users do.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sftp_pipeline.clock import Clock, utc_now
from sftp_pipeline.config import Config, load_config
from sftp_pipeline.flows.collect import CollectReport
from sftp_pipeline.flows.receipt_pull import PullReport
from sftp_pipeline.flows.send import SendReport
from sftp_pipeline.keys import GeneratedKeys, generate_keys
from sftp_pipeline.ledger import Inbound, Transfer
from sftp_pipeline.proof.reconcile import Reconciliation, from_ledger
from sftp_pipeline.wiring import open_runtime

# Why 120 s: a CLI run in these tests moves at most a few MB over loopback; longer means it hung.
CLI_TIMEOUT = 120

ALL_TYPES = ["transaction_confirmation", "invoice", "billing_payment", "outage_info", "aggregation_data"]


@dataclass
class Party:
    party_id: str
    directory: Path
    keys: GeneratedKeys

    @property
    def config_path(self) -> Path:
        return self.directory / "sftp-pipeline.toml"

    def config(self) -> Config:
        return load_config(self.config_path)

    def drop_dir(self, document_type: str) -> Path:
        return self.directory / "drop" / document_type

    def drop(self, document_type: str, name: str, data: bytes) -> Path:
        folder = self.drop_dir(document_type)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_bytes(data)
        os.utime(path, (0, 1_000_000_000))  # dropped long ago: past any stability window
        return path

    def send(self, *jobs: str, clock: Clock = utc_now) -> SendReport:
        config = self.config()
        selected = config.jobs_of("send", list(jobs))

        async def run() -> SendReport:
            with open_runtime(config, clock=clock) as rt:
                return await rt.outbound().run(selected)

        return asyncio.run(run())

    def collect(self, *jobs: str, clock: Clock = utc_now) -> CollectReport:
        config = self.config()

        async def run() -> CollectReport:
            with open_runtime(config, clock=clock) as rt:
                collector = rt.collector()
                return await collector.run(config.jobs_of("collect", list(jobs)))

        return asyncio.run(run())

    def pull_receipts(self, *jobs: str, clock: Clock = utc_now) -> PullReport:
        config = self.config()

        async def run() -> PullReport:
            with open_runtime(config, clock=clock) as rt:
                puller = rt.receipt_puller()
                return await puller.run(config.jobs_of("receipts", list(jobs)))

        return asyncio.run(run())

    def reconcile(self, *, now: datetime, since: datetime | None = None) -> Reconciliation:
        config = self.config()
        with open_runtime(config) as rt:
            return from_ledger(config, rt.ledger, now=now, since=since)

    def inbound(self) -> list[Inbound]:
        with open_runtime(self.config()) as rt:
            return sorted(rt.ledger.inbound_recent(10_000), key=lambda r: r.transfer_id)

    def transfers(self) -> list[Transfer]:
        with open_runtime(self.config()) as rt:
            return sorted(rt.ledger.recent(10_000), key=lambda t: t.id)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sftp_pipeline.cli", "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
            check=False,
        )


def make_party(
    directory: Path,
    party_id: str,
    *,
    partner_id: str,
    partner_cert: bytes,
    sftp: dict[str, object] | None = None,
    server_port: int | None = None,
    login_keys: list[str] | None = None,
    send_types: list[str] | None = None,
    jobs: dict[str, dict[str, object]] | None = None,
    pq: bool = False,
) -> Party:
    """A party folder: keys, config naming one partner, and job files (default: one per document type)."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = generate_keys(
        directory / "keys", party_id=party_id, party_name=f"{party_id.title()} Inc.", pq=pq, passphrase=None
    )
    partners = directory / "keys" / "partners"
    partners.mkdir(exist_ok=True)
    (partners / f"{partner_id}.asc").write_bytes(partner_cert)
    send_types = ALL_TYPES if send_types is None else send_types
    lines = [
        f'[party]\nid = "{party_id}"\nname = "{party_id.title()} Inc."\n',
        f"[partners.{partner_id}]",
        f'name = "{partner_id.title()} Co."',
        f'openpgp_cert = "keys/partners/{partner_id}.asc"',
        f"send = {send_types!r}".replace("'", '"'),
        f"receive = {ALL_TYPES!r}".replace("'", '"'),
    ]
    if login_keys:
        lines.append(f"ssh_login_keys = {login_keys!r}".replace("'", '"'))
    if sftp:
        lines.append(f"\n[partners.{partner_id}.sftp]")
        for key, value in sftp.items():
            lines.append(f"{key} = {_toml(value)}")
    if server_port is not None:
        lines.append(f'\n[server]\nlisten = ["127.0.0.1"]\nport = {server_port}\n')
    (directory / "sftp-pipeline.toml").write_text("\n".join(lines) + "\n")
    job_dir = directory / "jobs"
    job_dir.mkdir(exist_ok=True)
    if jobs is None:
        jobs = {f"{t}-out": {"document_type": t} for t in ALL_TYPES}
    for name, job in jobs.items():
        if job.get("kind", "send") == "send":
            spec = {
                "kind": "send",
                "partner": partner_id,
                "source": f"../drop/{job['document_type']}",
                "stable_seconds": 0,
                **job,
            }
        else:
            spec = {"partner": partner_id, **job}
        (job_dir / f"{name}.toml").write_text("".join(f"{k} = {_toml(v)}\n" for k, v in spec.items()))
    return Party(party_id, directory, keys)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
