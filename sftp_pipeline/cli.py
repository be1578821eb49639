"""``sftp-pipeline``: a thin client. It parses, loads the config, calls the services and renders.

Exit codes: 0 ok, 1 some work failed, 2 usage or configuration error. Every
:class:`~sftp_pipeline.errors.PipelineError` is mapped in :func:`main`, once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table
from typer.exceptions import TyperException

from sftp_pipeline import __version__
from sftp_pipeline.clock import utc_now
from sftp_pipeline.config import DEFAULT_CONFIG_NAME, Config, load_config
from sftp_pipeline.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, PipelineError, translate
from sftp_pipeline.proof.reconcile import Reconciliation
from sftp_pipeline.transport import Progress as ProgressCallback

log = logging.getLogger(__name__)

app = typer.Typer(
    name="sftp-pipeline",
    help="Sign, encrypt and push business documents to energy-market partners over SFTP, and prove delivery.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Our OpenPGP and SSH keys, and our partners'.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
audit_app = typer.Typer(help="The hash-chained audit log of every state change.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

# Why 40: a screenful; a run with more documents prints the ones that need a look and counts the rest.
OUTCOME_ROWS = 40

console = Console()
err_console = Console(stderr=True)

# Why 8 MiB: below that an upload is over before a bar would be read.
PROGRESS_MIN_BYTES = 8 * 1024 * 1024


class _State:
    config_path: Path = Path(DEFAULT_CONFIG_NAME)


state = _State()


@app.callback()
def _global(
    config: Annotated[
        Path,
        typer.Option("--config", "-c", envvar="SFTP_PIPELINE_CONFIG", help="The configuration file."),
    ] = Path(DEFAULT_CONFIG_NAME),
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
    log_json: Annotated[bool, typer.Option(help="Log one JSON object per line.")] = False,
) -> None:
    from sftp_pipeline.wiring import setup_logging

    state.config_path = config
    setup_logging(log_level, log_json)


def _config() -> Config:
    return load_config(state.config_path)


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"sftp-pipeline {__version__}")


class _RichProgress:
    """Progress bars for large uploads, only on a terminal."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, object] = {}

    def start(self, label: str, total: int) -> ProgressCallback:
        if total < PROGRESS_MIN_BYTES:
            return lambda n: None
        task = self.progress.add_task(label, total=total)
        self.tasks[label] = task
        return lambda n: self.progress.advance(task, n)  # type: ignore[arg-type]

    def finish(self, label: str) -> None:
        task = self.tasks.pop(label, None)
        if task is not None:
            self.progress.remove_task(task)  # type: ignore[arg-type]


@app.command()
def send(
    jobs: Annotated[list[str] | None, typer.Argument(help="Send jobs to run (default: all send jobs).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be sent; change nothing.")] = False,
    retry_failed: Annotated[bool, typer.Option(help="Put failed transfers back in the queue first.")] = False,
) -> None:
    """Take documents from the drop folders, seal them and upload them to the partners."""
    from sftp_pipeline.wiring import open_runtime

    config = _config()
    selected = config.jobs_of("send", jobs)
    with open_runtime(config) as rt:
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
            disable=not err_console.is_terminal,
        )
        with progress:
            outbound = rt.outbound(progress=_RichProgress(progress))
            report = asyncio.run(outbound.run(selected, dry_run=dry_run, retry_failed=retry_failed))
    table = Table("job", "file", "transfer", "result", "detail", title="send")
    rows = [(o.state, [o.job, o.name, o.transfer_id or "", o.state, o.detail]) for o in report.outcomes]
    styles = {"failed": "red", "pending": "yellow", "quarantined": "magenta", "uploaded": "green"}
    _print_outcomes(table, rows, styles, fine="uploaded", result_column=3, empty="nothing to send")
    summary = ", ".join(
        f"{report.count(s)} {s}"
        for s in ("uploaded", "duplicate", "quarantined", "pending", "failed", "waiting", "would-send")
        if report.count(s)
    )
    if summary:
        console.print(summary)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _print_outcomes(
    table: Table,
    rows: list[tuple[str, list[str]]],
    styles: dict[str, str],
    *,
    fine: str,
    result_column: int,
    empty: str,
) -> None:
    """A run's per-document table: every row up to :data:`OUTCOME_ROWS`; beyond that the rows that need a look
    first (anything not ``fine``), then a count of the rest. A night of 20,000 invoices must not print 20,000 rows
    (which takes Rich longer than sending them); ``status`` and the report list every one."""
    if not rows:
        console.print(empty)
        return
    shown = rows if len(rows) <= OUTCOME_ROWS else sorted(rows, key=lambda r: r[0] == fine)[:OUTCOME_ROWS]
    for result, cells in shown:
        style = styles.get(result)
        if style:
            cells = [*cells[:result_column], f"[{style}]{result}[/]", *cells[result_column + 1 :]]
        table.add_row(*cells)
    console.print(table)
    if len(rows) > len(shown):
        rest = Counter(r for r, _ in rows) - Counter(r for r, _ in shown)
        console.print(
            f"… and {len(rows) - len(shown)} more ({', '.join(f'{n} {r}' for r, n in sorted(rest.items()))}) — "
            f"`sftp-pipeline status --limit {len(rows)}` lists them all",
            highlight=False,
        )


@app.command()
def collect(
    jobs: Annotated[list[str] | None, typer.Argument(help="Collect jobs to run (default: all collect jobs).")] = None,
) -> None:
    """Take partners' documents, open and verify them, deliver the plaintext and answer with signed receipts."""
    from sftp_pipeline.wiring import open_runtime

    config = _config()
    selected = config.jobs_of("collect", jobs)
    with open_runtime(config) as rt:
        report = asyncio.run(rt.collector().run(selected))
    table = Table("partner", "file", "transfer", "result", "detail", title="collect")
    rows = [(o.result, [o.partner, o.name, o.transfer_id or "", o.result, o.detail]) for o in report.outcomes]
    styles = {"rejected": "red", "pending": "yellow", "quarantined": "magenta", "accepted": "green"}
    _print_outcomes(table, rows, styles, fine="accepted", result_column=3, empty="nothing to collect")
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def receipts(
    jobs: Annotated[list[str] | None, typer.Argument(help="Receipts jobs to run (default: all).")] = None,
) -> None:
    """Pull partners' signed receipts for what we sent, verify them and settle each transfer."""
    from sftp_pipeline.wiring import open_runtime

    config = _config()
    selected = config.jobs_of("receipts", jobs)
    with open_runtime(config) as rt:
        report = asyncio.run(rt.receipt_puller().run(selected))
    table = Table("partner", "receipt", "transfer", "verdict", "detail", title="receipts")
    rows = [(o.verdict, [o.partner, o.name, o.transfer_id or "", o.verdict, o.detail]) for o in report.outcomes]
    _print_outcomes(table, rows, {}, fine="receipted", result_column=3, empty="no receipts waiting")
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def serve() -> None:
    """Run the embedded SFTP server that our partners push to (until Ctrl-C or SIGTERM).

    When a collect job exists for a partner, each completed upload is collected at once, so its receipt
    carries the moment the upload completed.
    """
    from sftp_pipeline.wiring import embedded_server, open_runtime

    config = _config()
    if config.server is None:
        raise ConfigError(f"{config.path}: no [server] section; add one to host partners (see docs/configuration.md)")

    async def _serve() -> None:
        rt = open_runtime(config) if config.jobs_of("collect") else None
        on_upload = None
        if rt is not None:
            on_upload = rt.upload_hook(
                rt.collector(),
                report=lambda o: err_console.print(f"{o.partner}: {o.name} {o.result} {o.detail}", highlight=False),
            )
        server = embedded_server(config, on_upload=on_upload)
        await server.start()
        err_console.print(f"serving SFTP on {', '.join(config.server.listen)} port {server.port}")  # type: ignore[union-attr]
        try:
            await server.serve_forever()
        finally:
            if rt is not None:
                rt.close()

    try:
        asyncio.run(_serve())
    except KeyboardInterrupt:
        err_console.print("stopped")


@app.command()
def check() -> None:
    """Check every partner: connect, verify the host key, list the remote folders, check both parties' keys,
    and say whether the key exchange was post-quantum. Exit 1 on any problem."""
    from sftp_pipeline.check import run_checks

    config = _config()
    results = asyncio.run(run_checks(config, now=utc_now()))
    table = Table("partner", "check", "result", "detail", title="check")
    for r in results:
        verdict = "[green]ok[/]" if r.ok else "[red]FAILED[/]"
        if r.ok and r.detail.startswith("WARNING"):
            verdict = "[yellow]warning[/]"
        table.add_row(r.partner or "us", r.what, verdict, r.detail)
    console.print(table)
    if not all(r.ok for r in results):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def run() -> None:
    """The daemon: schedules, watched drop folders and the embedded SFTP server in one process (SIGTERM stops it)."""
    from sftp_pipeline.daemon.main import run_daemon

    run_daemon(_config())


@app.command()
def status(
    limit: Annotated[int, typer.Option(help="How many recent transfers to show.")] = 30,
    partner: Annotated[str | None, typer.Option(help="Only this partner.")] = None,
) -> None:
    """Show recent transfers and their state."""
    from sftp_pipeline.proof.reconcile import from_ledger, last_report_until
    from sftp_pipeline.wiring import open_ledger

    config = _config()
    with open_ledger(config) as ledger:
        rows = ledger.recent(limit, partner)
        inbound = ledger.inbound_recent(limit, partner)
        counts = ledger.counts()
        alerts = from_ledger(config, ledger, now=utc_now(), since=last_report_until(ledger)).alerts
    for alert in alerts:  # overdue receipts, rejections, expiring keys: first, as in the report
        colour = "red" if alert.severity == "critical" else "yellow"
        console.print(f"[{colour}]{alert.severity.upper()}[/]: {alert.subject} — {alert.action}", highlight=False)
    if not rows and not inbound:
        console.print("no transfers yet")
        return
    if rows:
        table = Table(
            "transfer", "partner", "type", "file", "state", "receipt", "partner received", "kex", "error", title="sent"
        )
        for t in rows:
            table.add_row(
                t.id,
                t.partner,
                t.document_type,
                t.source_name,
                t.state,
                t.receipt_status or "",
                t.partner_received_at or "",
                t.ssh_kex or "",
                (t.last_error or "")[:60],
            )
        console.print(table)
    if inbound:
        table = Table(
            "transfer", "partner", "type", "file", "state", "status", "received", "receipt sent", title="received"
        )
        for r in inbound:
            table.add_row(
                r.transfer_id,
                r.partner,
                r.document_type,
                r.remote_name,
                r.state,
                r.status or "",
                r.received_at,
                r.receipt_sent_at or "",
            )
        console.print(table)
    console.print(", ".join(f"{p}/{s}: {n}" for (p, s), n in sorted(counts.items())))


def _since(value: str | None, ledger: object) -> datetime | None:
    from sftp_pipeline.clock import parse_rfc3339
    from sftp_pipeline.proof.reconcile import last_report_until

    if value is None:
        return last_report_until(ledger)  # type: ignore[arg-type]
    if value == "all":
        return None
    try:
        return parse_rfc3339(value)
    except ValueError:
        raise ConfigError(f"--since {value!r}: use an RFC 3339 time such as 2026-11-26T00:00:00Z, or 'all'") from None


def _print_reconciliation(rec: Reconciliation) -> None:
    for alert in rec.alerts:
        colour = "red" if alert.severity == "critical" else "yellow"
        console.print(f"[{colour}]{alert.severity.upper()}[/]: {alert.subject} — {alert.action}", highlight=False)
    glance = Table("partner", "direction", "status", "documents", title="at a glance")
    for partner, counts in sorted(rec.counts().items()):
        for key, count in sorted(counts.items()):
            direction, status = key.split(":", 1)
            glance.add_row(partner, direction, status, str(count))
    console.print(glance)
    exceptions = rec.exceptions()
    if exceptions:
        table = Table("partner", "transfer", "type", "file", "status", "code", "what to do", title="needs action")
        for line in exceptions:
            table.add_row(
                line.partner,
                line.transfer_id,
                line.document_type,
                line.file,
                line.status,
                line.status_code or "",
                line.action,
            )
        console.print(table)
    start = line_time(rec.period_start) if rec.period_start else "the beginning"
    console.print(
        f"period {start} → {line_time(rec.period_end)}: {len(rec.lines)} documents, "
        f"{len(exceptions)} need action, {len(rec.unsolicited)} unsolicited and "
        f"{len(rec.duplicates)} duplicate receipts"
    )


def line_time(moment: datetime) -> str:
    from sftp_pipeline.clock import rfc3339

    return rfc3339(moment)


@app.command()
def reconcile(
    since: Annotated[
        str | None, typer.Option(help="Period start (RFC 3339), or 'all'; default: the last report.")
    ] = None,
) -> None:
    """Classify every document sent and received: delivered, pending, overdue, rejected, mismatch…"""
    from sftp_pipeline.proof.reconcile import from_ledger
    from sftp_pipeline.wiring import open_ledger

    config = _config()
    with open_ledger(config) as ledger:
        rec = from_ledger(config, ledger, now=utc_now(), since=_since(since, ledger))
    _print_reconciliation(rec)


@app.command()
def report(
    since: Annotated[
        str | None, typer.Option(help="Period start (RFC 3339), or 'all'; default: the last report.")
    ] = None,
    email: Annotated[
        bool, typer.Option("--email", help="Email it to the [smtp] recipients (queued if SMTP is down).")
    ] = False,
) -> None:
    """Write the signed reconciliation report (HTML + CSV) and optionally email it to settlement staff."""
    from sftp_pipeline.wiring import open_runtime

    config = _config()
    if email and config.smtp is None:
        raise ConfigError(f"{config.path}: --email needs an [smtp] section (see docs/configuration.md)")
    with open_runtime(config) as rt:
        produced = rt.produce_report(now=utc_now(), since=_since(since, rt.ledger) if since else "last", email=email)
    files = produced.files
    _print_reconciliation(produced.reconciliation)
    console.print(
        f"report: {files.html}\n        {files.csv}\n        (signatures: {files.html_sig.name}, {files.csv_sig.name})"
    )
    result = produced.mail
    if result is None:
        return
    for name in result.sent:
        console.print(f"emailed {name} to {', '.join(config.smtp.recipients)}")  # type: ignore[union-attr]
    for name, why in result.failed:
        err_console.print(f"[red]not emailed[/] {name}: {why} (kept in the mail outbox's failed/ folder)")
    if result.queued:
        err_console.print(f"[yellow]queued[/] {len(result.queued)} report(s) for the next run: {result.error}")
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit log: any edit, deletion, insertion, reordering or truncation is named by line."""
    from sftp_pipeline.proof.audit import verify_log
    from sftp_pipeline.wiring import open_ledger

    config = _config()
    with open_ledger(config) as ledger:  # read only: a sync would refuse a cut log and repair a torn line
        result = verify_log(config, ledger)
    if not result.ok:
        err_console.print(f"[red]audit log NOT intact[/]: {result.problem}", highlight=False)
        raise typer.Exit(EXIT_FAILED)
    pending = f"; {result.pending} events not yet exported (the next run appends them)" if result.pending else ""
    console.print(f"OK: {result.lines} lines, last seq {result.last_seq}, head {result.last_hash}{pending}")


@app.command()
def evidence(
    what: Annotated[str, typer.Argument(help="A transfer id, or 'verify'.")],
    bundle: Annotated[Path | None, typer.Argument(help="With 'verify': the bundle to check.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the bundle (.zip).")] = None,
    partner: Annotated[str | None, typer.Option(help="The partner, if the id is ambiguous.")] = None,
) -> None:
    """`evidence TRANSFER_ID -o FILE` writes a self-contained proof of delivery; `evidence verify FILE` checks one
    offline (signatures, hashes, audit chain) and says what it proves."""
    from sftp_pipeline.proof.evidence import build_evidence, verify_evidence

    if what == "verify":
        if bundle is None:
            raise ConfigError("evidence verify FILE: name the bundle to check")
        result = verify_evidence(bundle, now=utc_now())
        table = Table("check", "result", "detail", title=str(bundle))
        for finding in result.findings:
            table.add_row(finding.check, "[green]ok[/]" if finding.ok else "[red]FAILED[/]", finding.detail)
        console.print(table)
        console.print(result.summary)
        if not result.ok:
            raise typer.Exit(EXIT_FAILED)
        return
    from sftp_pipeline.wiring import open_ledger

    config = _config()
    target = output or Path(f"evidence-{what}.zip")
    with open_ledger(config) as ledger:
        path = build_evidence(config, ledger, what, target, partner=partner)
    console.print(f"evidence for {what}: {path}\ncheck it anywhere with: sftp-pipeline evidence verify {path}")


@keys_app.command("generate")
def keys_generate(
    pq: Annotated[
        bool, typer.Option("--pq", help="RFC 9580 post-quantum keys (ML-KEM-768+X25519, ML-DSA-65+Ed25519).")
    ] = False,
    directory: Annotated[
        Path | None, typer.Option(help="Where to write the keys (default: beside the config's keys).")
    ] = None,
    party_id: Annotated[str | None, typer.Option(help="Party id (default: from the config).")] = None,
    name: Annotated[str | None, typer.Option(help="Party name (default: from the config).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing keys.")] = False,
) -> None:
    """Create our OpenPGP key and SSH identity (and the embedded server's host key)."""
    from sftp_pipeline.keys import generate_keys, passphrase_from_env

    if directory is None or party_id is None or name is None:
        config = _config()
        directory = directory or config.keys.openpgp.parent
        party_id = party_id or config.party.id
        name = name or config.party.name
    generated = generate_keys(
        directory, party_id=party_id, party_name=name, pq=pq, passphrase=passphrase_from_env(), overwrite=force
    )
    table = Table("what", "file", "fingerprint", title=f"keys for {party_id}")
    for row in generated.rows():
        table.add_row(*row)
    console.print(table)
    console.print(generated.compatibility)


@keys_app.command("list")
def keys_list() -> None:
    """Show our keys and every partner's: algorithms, fingerprints, expiry, post-quantum or not."""
    from sftp_pipeline.keys import list_keys

    config = _config()
    rows = list_keys(config, utc_now())
    table = Table("owner", "kind", "algorithm", "fingerprint", "expires", "post-quantum", "problems", title="keys")
    bad = False
    for r in rows:
        bad = bad or bool(r.problems)
        table.add_row(
            r.owner,
            r.kind,
            r.algorithm,
            r.fingerprint,
            r.expires or "never",
            "yes" if r.post_quantum else "no",
            "; ".join(r.problems) or "ok",
        )
    console.print(table)
    if bad:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def demo(
    directory: Annotated[Path, typer.Argument(help="Where to create the two parties.")] = Path("sftp-pipeline-demo"),
    size_mb: Annotated[int, typer.Option(help="Size of the sample aggregation file, in MB.")] = 100,
) -> None:
    """Two parties on loopback: the aggregator seals and pushes samples into the utility's embedded server."""
    from sftp_pipeline.demo.run import run_demo

    ok = run_demo(directory, size_mb=size_mb, console=console)
    if not ok:
        raise typer.Exit(EXIT_FAILED)


def main() -> None:
    """Console-script entry point: run the app and map errors to exit codes, in one place."""
    try:
        result = app(standalone_mode=False)
    except PipelineError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except TyperException as exc:  # usage errors: unknown option, missing argument…
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_USAGE)
    except Exception as exc:  # a library's exception no adapter translated (or a bug): never a traceback
        error = translate(exc)
        if error is None:
            log.debug("internal error", exc_info=exc)
            err_console.print(
                f"[red]internal error:[/] {type(exc).__name__}: {exc}. This is a bug in sftp-pipeline: please "
                "report it with what the same command prints with --log-level debug",
                highlight=False,
            )
            sys.exit(EXIT_FAILED)
        log.debug("%s, from %s", error, type(exc).__name__, exc_info=exc)
        err_console.print(f"[red]error:[/] {error}", highlight=False)
        sys.exit(error.exit_code)
    sys.exit(result if isinstance(result, int) else EXIT_OK)


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "160")
    main()
