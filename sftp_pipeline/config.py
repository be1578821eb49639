"""Configuration: ``sftp-pipeline.toml`` plus one job per file in ``jobs/*.toml``.

Loaded once at start-up into one frozen :class:`Config` and passed down.
Relative paths are resolved against the directory of the file that names
them. Every error names the file, the key and the fix; unknown keys are
errors (a typo must never silently switch a safety off).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from sftp_pipeline.errors import ConfigError

DOCUMENT_TYPES = frozenset(
    {"transaction_confirmation", "invoice", "billing_payment", "outage_info", "aggregation_data"}
)
DocumentType = Literal["transaction_confirmation", "invoice", "billing_payment", "outage_info", "aggregation_data"]
PartyId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,39}$")]
RemoteDir = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")]

DEFAULT_CONFIG_NAME = "sftp-pipeline.toml"
DEFAULT_PORT = 22
# Why 15 s: long enough for a slow VPN handshake, short enough that a dead host fails the run quickly.
DEFAULT_CONNECT_TIMEOUT = 15.0
# Why 60 s: a stalled SFTP request with no byte moving for a minute is dead, not slow.
DEFAULT_STALL_TIMEOUT = 60.0
# NAESB EDM: a sender retries a failed transmission up to three times.
DEFAULT_ATTEMPTS = 3
# Why 4 GiB: above the largest aggregation files users report; guards a runaway export.
DEFAULT_MAX_DOCUMENT_BYTES = 4 * 1024**3
# Why 2 s: an operator's copy that pauses for longer than this is taken as finished by most MFT tools too.
DEFAULT_STABLE_SECONDS = 2.0
# Why 30 s: an SMTP relay that has not answered in half a minute is down; the report is queued and retried.
DEFAULT_SMTP_TIMEOUT = 30.0
# Why 24 h: a partner that collects nightly still answers within a day; later is worth a settlement call.
DEFAULT_SLA_HOURS = 24.0
# Why 30 days: time to agree a key roll-over with a partner before its key expires.
DEFAULT_KEY_EXPIRY_WARNING_DAYS = 30
DEFAULT_CATCH_UP_GRACE_HOURS = 6.0
DEFAULT_RESCAN_SECONDS = 30.0
# Why 8: enough requests to fill a LAN link with small files without starving a large upload.
DEFAULT_FILES_IN_FLIGHT = 8


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Party(_Model):
    id: PartyId
    name: str = Field(min_length=1)


class Secret(_Model):
    """Where a passphrase comes from: an environment variable or a file, never the config itself."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        if self.env and self.file:
            raise ValueError("give either 'env' or 'file', not both")
        return self


class OurKeys(_Model):
    openpgp: Path = Path("keys/openpgp.key")
    openpgp_passphrase: Secret | None = None
    ssh: Path = Path("keys/ssh_ed25519")
    ssh_passphrase: Secret | None = None
    host_key: Path = Path("keys/ssh_host_ed25519")


class RemoteDirs(_Model):
    """Directories on the partner's SFTP server, named from the server's side."""

    inbox: RemoteDir = "inbox"  # we upload documents here
    outbox: RemoteDir = "outbox"  # the partner leaves documents for us here
    receipts_in: RemoteDir = "receipts-in"  # we upload receipts for what they sent us
    receipts_out: RemoteDir = "receipts-out"  # the partner leaves receipts for what we sent


class SftpEndpoint(_Model):
    host: str = Field(min_length=1)
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    user: str = Field(min_length=1)
    host_keys: list[str] = Field(min_length=1)
    require_pq_kex: bool = False
    dirs: RemoteDirs = RemoteDirs()
    connect_timeout: float = Field(default=DEFAULT_CONNECT_TIMEOUT, gt=0)
    stall_timeout: float = Field(default=DEFAULT_STALL_TIMEOUT, gt=0)
    attempts: int = Field(default=DEFAULT_ATTEMPTS, ge=1, le=10)
    files_in_flight: int = Field(default=DEFAULT_FILES_IN_FLIGHT, ge=1, le=64)

    @field_validator("host_keys")
    @classmethod
    def _pins_look_right(cls, pins: list[str]) -> list[str]:
        for pin in pins:
            if pin.startswith("SHA256:"):
                continue
            if len(pin.split()) < 2:
                raise ValueError(
                    f"host key {pin!r} is neither a known_hosts line nor a 'SHA256:' fingerprint; "
                    "get one with `ssh-keyscan -p PORT HOST` or `ssh-keygen -lf HOSTKEY.pub`"
                )
        return pins


class Partner(_Model):
    id: PartyId
    name: str = Field(min_length=1)
    openpgp_cert: Path
    send: list[DocumentType] = []  # document types we may send this partner
    receive: list[DocumentType] = []  # document types this partner may send us
    ssh_login_keys: list[str] = []  # OpenSSH public keys the partner logs into our server with
    sftp: SftpEndpoint | None = None  # their server; None when they push to ours
    encrypt_to_self: bool = True  # also encrypt to our own key, so the archived sealed copy stays readable
    # Receipt service level for documents we send this partner, in hours: overall, and per document type.
    sla_hours: float | None = Field(default=None, gt=0)
    sla_hours_by_type: dict[DocumentType, float] = {}

    @field_validator("ssh_login_keys")
    @classmethod
    def _keys_look_right(cls, keys: list[str]) -> list[str]:
        for key in keys:
            fields = key.split()
            if len(fields) < 2 or not fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
                raise ValueError(f"{key[:40]!r}… is not an OpenSSH public key line (as in id_ed25519.pub)")
            if fields[0].startswith(("ecdsa-", "sk-ecdsa-")):
                # Our server no longer accepts NIST-curve signatures (transport/sshalgs.py, ssh-audit's hardened
                # policy).
                raise ValueError(
                    f"{fields[0]} key {key[:40]!r}…: NIST-curve (ECDSA) logins are refused by our hardened SSH "
                    "policy; ask the partner for an Ed25519 key (`ssh-keygen -t ed25519`) or RSA ≥ 3072 bits"
                )
        return keys


class Server(_Model):
    """The embedded SFTP server, for a party that hosts its partners."""

    listen: list[str] = ["127.0.0.1"]
    port: int = Field(default=2222, ge=0, le=65535)
    root: Path = Path("sftp-root")  # one subdirectory per partner
    # Why 10 MiB/s minimum is not set: the server never throttles; limits are the partner's contract.
    max_sessions_per_partner: int = Field(default=8, ge=1, le=256)


class Smtp(_Model):
    """Where reconciliation reports are emailed."""

    host: str = Field(min_length=1)
    # "starttls" (port 587), "tls" (implicit, port 465), or "none" — only with trusted_local_relay = true.
    security: Literal["starttls", "tls", "none"] = "starttls"
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str | None = None
    password: Secret | None = None
    # A relay on this host or a private segment that accepts mail without TLS; the only way to send in clear.
    trusted_local_relay: bool = False
    ca_file: Path | None = None  # extra CA certificate(s) to trust, e.g. a company relay's private CA
    sender: str = Field(min_length=3)
    recipients: list[str] = Field(min_length=1)
    timeout: float = Field(default=DEFAULT_SMTP_TIMEOUT, gt=0)

    @model_validator(mode="after")
    def _tls_or_trusted(self) -> Smtp:
        if self.security == "none" and not self.trusted_local_relay:
            raise ValueError(
                "security = 'none' sends reports in clear text; use 'starttls' or 'tls', or set "
                "trusted_local_relay = true for a relay on this host"
            )
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or {"starttls": 587, "tls": 465, "none": 25}[self.security]


class Report(_Model):
    """The reconciliation report: service levels, time zone, alerts."""

    timezone: str = "UTC"  # reports show UTC and this local time zone
    # NAESB EDM asks for a receipt within minutes of the upload; a day leaves room for a partner's nightly batch.
    sla_hours: float = Field(default=DEFAULT_SLA_HOURS, gt=0)
    key_expiry_warning_days: int = Field(default=DEFAULT_KEY_EXPIRY_WARNING_DAYS, ge=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r}; use an IANA name such as 'America/Chicago'") from None
        return zone


class Limits(_Model):
    max_document_bytes: int = Field(default=DEFAULT_MAX_DOCUMENT_BYTES, gt=0)


class _Scheduled(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    # A 5-field cron expression ("30 2 * * *" = 02:30 every day) in ``timezone``; the daemon runs the job then.
    schedule: str | None = None
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, zone: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r}; use an IANA name such as 'America/Chicago'") from None
        return zone

    @model_validator(mode="after")
    def _cron(self) -> _Scheduled:
        """Check the schedule with crontab's own meaning (0 and 7 are Sunday) and that it ever fires."""
        if self.schedule is not None:
            from sftp_pipeline.cron import CronSchedule

            try:
                CronSchedule(self.schedule, self.timezone)
            except ValueError as exc:
                raise ValueError(
                    f"schedule {self.schedule!r} is not a usable 5-field cron expression "
                    f"(minute hour day month weekday), e.g. '30 2 * * *': {exc}"
                ) from None
        return self


class _JobBase(_Scheduled):
    partner: PartyId


class SendJob(_JobBase):
    """Seal what is dropped in ``source`` and upload it to ``partner`` as ``document_type``."""

    kind: Literal["send"]
    document_type: DocumentType
    source: Path
    pattern: str = "*"
    max_document_bytes: int | None = Field(default=None, gt=0)
    stable_seconds: float = Field(default=DEFAULT_STABLE_SECONDS, ge=0)
    # Watch the folder (the daemon sends a dropped file within about a second), besides any schedule.
    watch: bool = False


class CollectJob(_JobBase):
    """Take the partner's documents, open and verify them, deliver plaintext to ``deliver_to``, answer with receipts."""

    kind: Literal["collect"]
    deliver_to: Path
    # Why per type sub-folders: settlement systems import invoices and outage notices from different places.
    per_type_folders: bool = True
    max_document_bytes: int | None = Field(default=None, gt=0)


class ReceiptsJob(_JobBase):
    """Pull the partner's signed receipts for what we sent, verify them and settle the ledger."""

    kind: Literal["receipts"]


class ReportJob(_Scheduled):
    """Reconcile and write the signed report (and email it when ``email``): the morning settlement report."""

    kind: Literal["report"]
    email: bool = True


AnyJob = SendJob | CollectJob | ReceiptsJob | ReportJob
Job = Annotated[AnyJob, Field(discriminator="kind")]
_JOB_ADAPTER: TypeAdapter[AnyJob] = TypeAdapter(Job)


class Daemon(_Model):
    """``sftp-pipeline run``: schedules, watched folders and the embedded server in one process."""

    # Why 6 h: a nightly run missed while the host rebooted at 02:00 still runs if it is back by 08:00;
    # later than that, running it unasked could surprise the operators — it is reported instead.
    catch_up_grace_hours: float = Field(default=DEFAULT_CATCH_UP_GRACE_HOURS, ge=0)
    # Why 30 s: the safety net for events a watcher missed (inotify overflow, network shares) without
    # rescanning large folders too often.
    rescan_seconds: float = Field(default=DEFAULT_RESCAN_SECONDS, gt=0)


class Config(_Model):
    path: Path
    party: Party
    state_dir: Path = Path("state")
    jobs_dir: Path = Path("jobs")
    keys: OurKeys = OurKeys()
    server: Server | None = None
    limits: Limits = Limits()
    smtp: Smtp | None = None
    report: Report = Report()
    daemon: Daemon = Daemon()
    partners: dict[str, Partner] = {}
    jobs: dict[str, Job] = {}

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        for key, partner in self.partners.items():
            if key != partner.id:
                raise ValueError(f"partners.{key}: the table name and its 'id' ({partner.id!r}) differ")
            if partner.id == self.party.id:
                raise ValueError(f"partners.{key}: a partner cannot have our own party id")
        for job in self.jobs.values():
            if isinstance(job, ReportJob):
                continue
            if job.partner not in self.partners:
                raise ValueError(
                    f"job {job.name!r} names partner {job.partner!r}, which is not configured; "
                    f"known partners: {', '.join(sorted(self.partners)) or 'none'}"
                )
        return self

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def partner(self, partner_id: str) -> Partner:
        try:
            return self.partners[partner_id]
        except KeyError:
            raise ConfigError(f"{self.path}: no partner {partner_id!r} is configured") from None

    def sla(self, partner_id: str, document_type: str) -> float:
        """The receipt service level, in hours, for a document type sent to a partner."""
        partner = self.partners.get(partner_id)
        if partner is not None:
            by_type = partner.sla_hours_by_type.get(document_type)  # type: ignore[call-overload]
            if by_type is not None:
                return float(by_type)
            if partner.sla_hours is not None:
                return partner.sla_hours
        return self.report.sla_hours

    def jobs_of(self, kind: str, names: list[str] | None = None) -> list[Any]:
        """The jobs of one kind, all or the named ones (a name of another kind or unknown is an error)."""
        if not names:
            return [j for j in self.jobs.values() if j.kind == kind]
        wrong = [n for n in names if n not in self.jobs or self.jobs[n].kind != kind]
        if wrong:
            mine = sorted(n for n, j in self.jobs.items() if j.kind == kind)
            raise ConfigError(
                f"{self.path}: no {kind} job named {', '.join(wrong)}; {kind} jobs in {self.jobs_dir}: "
                f"{', '.join(mine) or 'none'}"
            )
        return [self.jobs[n] for n in names]

    def hosted_root(self, partner_id: str) -> Path:
        """The directory our embedded server (or our OpenSSH) serves to ``partner_id``."""
        root = self.server.root if self.server else self.base_dir / "sftp-root"
        return root / partner_id


def _fix_hint(error_type: str) -> str:
    return {
        "extra_forbidden": "remove it, or check its spelling against docs/configuration.md",
        "missing": "add it",
        "literal_error": "use one of the allowed values",
        "string_pattern_mismatch": "use lowercase letters, digits and '-' (or '_' for names)",
    }.get(error_type, "correct the value")


def _format_validation(path: Path, exc: ValidationError, prefix: str = "") -> str:
    lines = [f"{path}: invalid configuration"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after",))
        loc = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(top level)"
        lines.append(f"  {loc}: {err['msg']} — fix: {_fix_hint(err['type'])}")
    return "\n".join(lines)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: configuration file not found; create it (see docs/configuration.md) or pass --config FILE"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def _resolve(base: Path, value: Path) -> Path:
    return value if value.is_absolute() else (base / value)


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make every path in the raw config absolute against ``base`` (the config file's directory)."""
    for key in ("state_dir", "jobs_dir"):
        if isinstance(raw.get(key), str):
            raw[key] = str(_resolve(base, Path(raw[key])))
    smtp = raw.get("smtp")
    if isinstance(smtp, dict):
        if isinstance(smtp.get("ca_file"), str):
            smtp["ca_file"] = str(_resolve(base, Path(smtp["ca_file"])))
        password = smtp.get("password")
        if isinstance(password, dict) and isinstance(password.get("file"), str):
            password["file"] = str(_resolve(base, Path(password["file"])))
    keys = raw.setdefault("keys", {})
    if isinstance(keys, dict):
        for key, default in (
            ("openpgp", "keys/openpgp.key"),
            ("ssh", "keys/ssh_ed25519"),
            ("host_key", "keys/ssh_host_ed25519"),
        ):
            value = keys.get(key, default)
            if isinstance(value, str):
                keys[key] = str(_resolve(base, Path(value)))
        for key in ("openpgp_passphrase", "ssh_passphrase"):
            secret = keys.get(key)
            if isinstance(secret, dict) and isinstance(secret.get("file"), str):
                secret["file"] = str(_resolve(base, Path(secret["file"])))
    server = raw.get("server")
    if isinstance(server, dict):
        server["root"] = str(_resolve(base, Path(server.get("root", "sftp-root"))))
    for partner in (raw.get("partners") or {}).values():
        if isinstance(partner, dict) and isinstance(partner.get("openpgp_cert"), str):
            partner["openpgp_cert"] = str(_resolve(base, Path(partner["openpgp_cert"])))
    return raw


def load_job(path: Path) -> AnyJob:
    raw = _read_toml(path)
    raw.setdefault("name", path.stem)
    for key in ("source", "deliver_to"):
        if isinstance(raw.get(key), str):
            raw[key] = str(_resolve(path.parent, Path(raw[key])))
    try:
        return _JOB_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(path, exc)) from None


def load_config(path: str | Path) -> Config:
    """Read, resolve and validate the configuration and its job files."""
    path = Path(path).absolute()
    raw = _resolve_paths(_read_toml(path), path.parent)
    raw["path"] = str(path)
    if "state_dir" not in raw:
        raw["state_dir"] = str(path.parent / "state")
    if "jobs_dir" not in raw:
        raw["jobs_dir"] = str(path.parent / "jobs")
    if "server" not in raw:
        pass
    elif isinstance(raw["server"], dict) and "root" not in raw["server"]:
        raw["server"]["root"] = str(path.parent / "sftp-root")
    jobs: dict[str, AnyJob] = {}
    jobs_dir = Path(raw["jobs_dir"])
    if jobs_dir.is_dir():
        for job_file in sorted(jobs_dir.glob("*.toml")):
            job = load_job(job_file)
            if job.name in jobs:
                raise ConfigError(f"{job_file}: job name {job.name!r} is already used by another job file")
            jobs[job.name] = job
    raw["jobs"] = jobs
    for key, partner in (raw.get("partners") or {}).items():
        if isinstance(partner, dict):
            partner.setdefault("id", key)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(path, exc)) from None
