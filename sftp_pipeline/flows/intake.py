"""Drop-folder intake: which dropped files to take, which to quarantine, and how.

Deciding is pure (:func:`classify` over a :class:`Seen` snapshot); looking at
the disk and moving files are thin functions below it. Nothing is ever
deleted: a file we will not send is moved to quarantine with a reason file
beside it that says what is wrong and what to do.
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sftp_pipeline.clock import Clock, rfc3339, utc_now
from sftp_pipeline.fsutil import move_into
from sftp_pipeline.names import is_temporary

# Why 0.25 s: short enough for interactive use, long enough to see a copy in progress grow.
STABILITY_POLL_SECONDS = 0.25

REASONS = {
    "symlink": "is a symbolic link; drop the file itself, not a link to it",
    "not-regular": "is not a regular file (directory, FIFO, socket or device); drop only regular files",
    "empty": "is empty (0 bytes); re-export the document and drop it again",
    "oversize": "is larger than the configured limit; split it or raise max_document_bytes for this job",
    "unreadable": "cannot be read by the pipeline; fix its permissions and drop it again",
    "unauthorised-document": (
        "is a document type this partner may not receive; add it to the partner's 'send' list "
        "in sftp-pipeline.toml if the contract allows it"
    ),
}


@dataclass(frozen=True, slots=True)
class Seen:
    """What one look at a directory entry showed (lstat, never following links)."""

    name: str
    mode: int
    size: int
    mtime: float
    readable: bool = True


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # "take", "wait", "skip" or "quarantine"
    reason: str = ""


def classify(
    seen: Seen, *, pattern: str, max_bytes: int, authorised: bool, now: float, stable_seconds: float
) -> Decision:
    """Decide what to do with one dropped entry."""
    if is_temporary(seen.name) or not fnmatch.fnmatch(seen.name, pattern):
        return Decision("skip")
    if stat.S_ISLNK(seen.mode):
        return Decision("quarantine", "symlink")
    if not stat.S_ISREG(seen.mode):
        return Decision("quarantine", "not-regular")
    if now - seen.mtime < stable_seconds:
        return Decision("wait")
    if not authorised:
        return Decision("quarantine", "unauthorised-document")
    if not seen.readable:
        return Decision("quarantine", "unreadable")
    if seen.size == 0:
        return Decision("quarantine", "empty")
    if seen.size > max_bytes:
        return Decision("quarantine", "oversize")
    return Decision("take")


def look(directory: Path) -> list[Seen]:
    """lstat every entry of ``directory`` (sorted by name); a missing directory is created empty."""
    directory.mkdir(parents=True, exist_ok=True)
    seen = []
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # taken by someone else between listing and stat
            readable = not stat.S_ISREG(st.st_mode) or os.access(entry.path, os.R_OK, follow_symlinks=False)
            seen.append(Seen(entry.name, st.st_mode, st.st_size, st.st_mtime, readable))
    return sorted(seen, key=lambda s: s.name)


@dataclass(frozen=True, slots=True)
class Intake:
    take: list[Seen]
    quarantine: list[tuple[Seen, str]]
    waiting: list[Seen]


def scan(
    directory: Path,
    *,
    pattern: str,
    max_bytes: int,
    authorised: bool,
    stable_seconds: float,
    wall: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Intake:
    """Look at ``directory`` and sort its entries; files still being written are given one stability window.

    A file modified within ``stable_seconds`` is looked at again after the window: if its size and mtime
    did not change it is taken, otherwise it waits for the next run (or the watcher's next event).
    """
    first = look(directory)
    decisions = [
        (
            s,
            classify(
                s,
                pattern=pattern,
                max_bytes=max_bytes,
                authorised=authorised,
                now=wall(),
                stable_seconds=stable_seconds,
            ),
        )
        for s in first
    ]
    young = [s for s, d in decisions if d.action == "wait"]
    settled: dict[str, Seen] = {}
    if young:
        newest = max(s.mtime for s in young)
        sleep(max(STABILITY_POLL_SECONDS, stable_seconds - (wall() - newest)))
        again = {s.name: s for s in look(directory)}
        for s in young:
            later = again.get(s.name)
            if later is not None and (later.size, later.mtime) == (s.size, s.mtime):
                settled[s.name] = later
    take, quarantine, waiting = [], [], []
    for s, d in decisions:
        if d.action == "wait":
            if s.name not in settled:
                waiting.append(s)
                continue
            d = classify(
                s, pattern=pattern, max_bytes=max_bytes, authorised=authorised, now=float("inf"), stable_seconds=0
            )
        if d.action == "take":
            take.append(s)
        elif d.action == "quarantine":
            quarantine.append((s, d.reason))
    return Intake(take, quarantine, waiting)


def quarantine_file(
    path: Path,
    quarantine_dir: Path,
    reason: str,
    *,
    job: str,
    detail: str = "",
    clock: Clock = utc_now,
) -> Path:
    """Move ``path`` (file, link or directory — never followed) into quarantine with a reason file beside it."""
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    moment = clock()
    stem = f"{moment.strftime('%Y%m%dT%H%M%S%fZ')}_{path.name}"
    target = quarantine_dir / stem
    suffix = 1
    while target.exists() or target.is_symlink():
        target = quarantine_dir / f"{stem}.{suffix}"
        suffix += 1
    explanation = REASONS.get(reason, reason)
    move_into(path, target)
    note = {
        "file": path.name,
        "dropped_in": str(path.parent),
        "quarantined_as": target.name,
        "reason": reason,
        "message": f"{path.name} {explanation}",
        "detail": detail,
        "job": job,
        "at": rfc3339(moment),
    }
    reason_file = target.with_name(target.name + ".reason.json")
    reason_file.write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
    return target
