"""Benchmark harness (issue 6): our pipeline against the gpg + sftp shell baseline, on a throw-away local sshd.

    python bench/run.py [--size-mib 1024] [--repeat 3] [--only large,receive,small,reconcile,watch,v2]
                        [--out bench/results] [--keep]

Writes ``<out>/<timestamp>.json`` (every sample, the machine) and ``<out>/latest.md`` (the table).
See bench/README.md for what each scenario measures and how to read the table.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `python bench/run.py` puts bench/ first; the harness imports tests.peers too

from bench import scenarios  # noqa: E402
from bench.lab import open_lab  # noqa: E402
from bench.scenarios import Result  # noqa: E402

ALL = ("large", "receive", "small", "reconcile", "watch", "v2")
# Why 0.2 s: short enough that the watch latency is mostly our own work, long enough to be a real window.
WATCH_STABLE_SECONDS = 0.2
# Why 256 MiB: the size the SEIPDv2 memory report was made at; 1 GiB would only take longer to say the same.
V2_SIZE_MIB = 256


def _version(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    return (proc.stdout + proc.stderr).strip().splitlines()[0]


def machine() -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )  # fmt: skip
    mem_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    packages = {}
    for name in ("sftp-pipeline", "pysequoia", "asyncssh"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _version(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "openssh": _version(["ssh", "-V"]),
        "gnupg": _version(["gpg", "--version"]),
        "python": sys.version.split()[0],
        **packages,
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"


def markdown(results: list[Result], info: dict[str, Any], args: argparse.Namespace, when: str) -> str:
    lines = [
        f"## Benchmark results ({when})",
        "",
        f"`python bench/run.py --size-mib {args.size_mib} --repeat {args.repeat}"
        + (f" --only {args.only}" if args.only != ",".join(ALL) else "")
        + "` — medians of alternating runs; ratio > 1 means ours is better.",
        "",
        "| scenario | metric | ours | baseline (gpg + sftp) | ratio | target | met? |",
        "|---|---|---:|---:|---:|---|:---:|",
    ]
    for r in results:
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "—"
        met = "yes" if r.met else "no" if r.met is not None else "—"
        lines.append(
            f"| {r.scenario} | {r.metric} | {_fmt(r.ours)} | {_fmt(r.baseline)} | {ratio} | {r.target} | {met} |"
        )
    extra = _notes(results)
    if extra:
        lines += ["", *extra]
    lines += [
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, Linux {info['kernel']}, "
        f"{info['os']}; {info['openssh']}; {info['gnupg']}; Python {info['python']}, pysequoia {info['pysequoia']}, "
        f"asyncssh {info['asyncssh']}. Load average (1/5/15 min) before {info.get('loadavg_1_5_15_before')}, "
        f"after {info.get('loadavg_1_5_15_after')}.",
        "",
    ]
    return "\n".join(lines)


def _notes(results: list[Result]) -> list[str]:
    notes = []
    for r in results:
        d = r.details
        if "ours" in d and "max_peak_rss_mib" in d["ours"]:
            notes.append(
                f"- {r.scenario}: peak RSS ours {d['ours']['max_peak_rss_mib']} MiB, "
                f"baseline {d['baseline']['max_peak_rss_mib']} MiB (largest single process); "
                f"median wall ours {d['ours']['median_seconds']} s, baseline {d['baseline']['median_seconds']} s."
            )
        if "floor" in d:
            f = d["floor"]
            notes.append(
                f"- small, the floor of our stack for {d['count']:,} documents: start-up {f['startup_seconds']} s + "
                f"seal {f['seal_ms_per_document']} ms and SFTP {f['sftp_ms_per_document']} ms (CPU) per document = "
                f"{f['total_seconds']} s, against a 4× budget of {f['budget_seconds']} s (the baseline's median / 4): "
                f"{f['total_seconds'] / f['budget_seconds']:.0%} of it before claiming, ledger, fsyncs and archiving. "
                f"A whole run needs {f['cpu_ours_plus_sshd_seconds']} s of CPU (ours and sshd's): on "
                f"{os.cpu_count()} cores no split of the work finishes it in less than "
                f"{f['cpu_ours_plus_sshd_seconds'] / (os.cpu_count() or 1):.2f} s."
            )
        if "p50_seconds" in d:
            notes.append(
                f"- watch: {d['count']} files, stability window {d['stable_seconds']} s: p50 {d['p50_seconds']} s, "
                f"p95 {d['p95_seconds']} s, max {d['max_seconds']} s (drop to final name on the server)."
            )
        if "median_seconds" in d and isinstance(d["median_seconds"], dict):
            parts = ", ".join(f"{k} {v} s" for k, v in d["median_seconds"].items())
            notes.append(f"- reconcile: {parts}; {d['lines']:,} report lines, HTML {d['html_bytes']:,} bytes.")
        if "rss_over_file_size" in d:
            notes.append(
                f"- SEIPDv2 receive of {d['size_mib']} MiB: collect peak RSS {d['collect_peak_rss_mib']} MiB "
                f"({d['rss_over_file_size']}× the file), {d['collect_seconds']} s; the sender's send peaked at "
                f"{d['sender_send_peak_rss_mib']} MiB."
            )
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the large file (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs per side (default 3)")
    parser.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {', '.join(ALL)}")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results folder")
    parser.add_argument("--scratch", type=Path, default=None, help="where to build the lab (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, ledgers) afterwards")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(ALL)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(ALL)}")
    if not shutil.which("sftp") or not shutil.which("gpg"):
        parser.error("the baseline needs the OpenSSH client (sftp) and GnuPG: apt-get install openssh-client gnupg")

    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="sftp-pipeline-bench-", dir=args.scratch))
    lab = open_lab(scratch / "lab", stable_seconds=WATCH_STABLE_SECONDS)
    steps: dict[str, Callable[[], Result]] = {
        "large": lambda: scenarios.large(lab, args.size_mib, args.repeat),
        "receive": lambda: scenarios.receive(lab, args.size_mib, args.repeat),
        "small": lambda: scenarios.small(lab, args.repeat),
        "watch": lambda: scenarios.watch(lab, WATCH_STABLE_SECONDS),
        "reconcile": lambda: scenarios.reconcile(lab, args.repeat),
        "v2": lambda: scenarios.receive_v2_memory(lab, min(V2_SIZE_MIB, args.size_mib)),
    }
    results: list[Result] = []
    try:
        for name, step in steps.items():
            if name not in chosen:
                continue
            started = time.perf_counter()
            print(f"[bench] {name}…", file=sys.stderr, flush=True)
            try:
                result = step()
            except Exception as exc:  # one broken scenario must not throw away the others' numbers
                print(f"[bench] {name} FAILED: {exc}", file=sys.stderr, flush=True)
                result = Result(name, "error", None, None, True, "—", False, {"error": str(exc)[-2000:]})
            print(f"[bench] {name}: {result.ours} vs {result.baseline} {result.metric} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
            results.append(result)
    finally:
        lab.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"[bench] scratch kept in {scratch}", file=sys.stderr)

    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    info = machine()
    # Other work on the machine skews every number; the load averages say whether the run had it to itself.
    info["loadavg_1_5_15_before"] = [round(x, 2) for x in load_before]
    info["loadavg_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "when": when,
        "args": {"size_mib": args.size_mib, "repeat": args.repeat, "only": chosen},
        "machine": info,
        "results": [{**asdict(r), "ratio": r.ratio} for r in results],
    }
    stamp = when.replace(":", "").replace("-", "")
    (args.out / f"{stamp}.json").write_text(json.dumps(record, indent=2) + "\n")
    table = markdown(results, info, args, when)
    (args.out / "latest.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
