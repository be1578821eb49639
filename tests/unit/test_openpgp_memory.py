"""Sealing streams: peak memory stays flat for a large file (measured in a fresh subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Why 200 MB: large enough that buffering the file would dwarf the interpreter (~25 MiB) many times over.
LARGE_BYTES = 200_000_000
# Why 100 MiB: measured peak is ~35 MiB (interpreter + Sequoia buffers); anything near the file size fails.
MAX_PEAK_MIB = 100

_CHILD = """
import json, sys
from datetime import UTC, datetime
from pathlib import Path
import pysequoia
from sftp_pipeline.openpgp import SigningKey, seal
us = pysequoia.Tsk.generate("Us")
signer = SigningKey(us.extract_certificate(), us.signer())
info = seal(Path(sys.argv[1]), Path(sys.argv[2]), signer=signer, recipients=[signer.cert], now=datetime.now(UTC))
# VmHWM belongs to this exec'd image; ru_maxrss would carry over the forking pytest process's peak.
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
peak_mib = int(hwm.split()[1]) / 1024
print(json.dumps({"peak_mib": peak_mib, "plaintext_size": info.plaintext_size,
                  "ciphertext_size": info.ciphertext_size}))
"""


@pytest.mark.slow
def test_sealing_a_large_file_keeps_memory_flat(tmp_path: Path) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc (Linux)")
    src = tmp_path / "aggregation.csv"
    with src.open("wb") as fh:  # sparse: no disk cost, and Sequoia does not compress, so size is real work
        fh.truncate(LARGE_BYTES)
    dst = tmp_path / "aggregation.csv.pgp"
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(dst)], capture_output=True, text=True, check=True, timeout=300
    )
    result = json.loads(out.stdout)
    assert result["plaintext_size"] == LARGE_BYTES
    assert result["ciphertext_size"] == dst.stat().st_size > LARGE_BYTES
    assert result["peak_mib"] < MAX_PEAK_MIB, result
