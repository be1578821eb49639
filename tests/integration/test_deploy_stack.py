"""The deploy/ staging stack under Docker (pytest-docker): both parties and the OpenSSH partner come up,
`check` passes, and dropped documents reach the utility and the OpenSSH partner.

Runs only where a Docker engine (and the compose plugin) answers; elsewhere — our CI machines have none —
it skips and says why, even under CI=true: this is not one of the real-peer tests CI must run.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "deploy" / "docker-compose.yml"
# Why 30 s: `docker info` answers at once from a live engine; a hung socket must not hang the test run.
DOCKER_PROBE_TIMEOUT = 30
# Why 10 minutes: the first build downloads base images and wheels; later runs take seconds.
STACK_TIMEOUT = 600.0
# Why 180 s: jobs run every minute and watched folders within seconds; three minutes means it is stuck.
FLOW_TIMEOUT = 180.0


def _why_no_docker() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no docker client is installed"
    probes = (([docker, "info"], "no Docker engine answers"), ([docker, "compose", "version"], "no compose plugin"))
    for argv, what in probes:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=DOCKER_PROBE_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{what}: `{' '.join(argv[1:])}` failed ({exc})"
        if result.returncode != 0:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
            return f"{what}: `docker {' '.join(argv[1:])}` exited {result.returncode} ({detail[0] if detail else ''})"
    return None


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    """pytest-docker's compose file — and the gate: skip before any compose command when Docker is absent."""
    reason = _why_no_docker()
    if reason is not None:
        pytest.skip(f"the deploy/ stack test needs Docker: {reason}")
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    # Not `up --wait`: the one-shot setup service exits by design, which some compose versions count as failure.
    return ["up --build -d"]


def _compose(project: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", project, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _eventually(what: str, probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(2)
    pytest.fail(f"{what} did not happen within {timeout:g}s")


def test_the_staging_stack_exchanges_documents(docker_services: object, docker_compose_project_name: str) -> None:
    project = docker_compose_project_name
    checks: list[subprocess.CompletedProcess[str]] = []

    def check_passes() -> bool:
        checks.append(_compose(project, "exec", "-T", "aggregator", "sftp-pipeline", "check"))
        return checks[-1].returncode == 0

    _eventually("`sftp-pipeline check` passing in the aggregator", check_passes, STACK_TIMEOUT)
    output = checks[-1].stdout
    assert "mlkem768x25519-sha256" in output  # the utility's embedded server: post-quantum
    assert "curve25519-sha256" in output  # Debian 12's OpenSSH: not post-quantum, and said so

    marker = f"STAGING-{time.time_ns()}"
    drop = f"printf '<Invoice>{marker}</Invoice>' > drop/invoice/INV-{marker}.xml"
    drop += f" && printf '<Invoice>{marker}</Invoice>' > drop/legacy/LEG-{marker}.xml"
    assert _compose(project, "exec", "-T", "aggregator", "sh", "-c", drop).returncode == 0
    _eventually(
        "the invoice delivered to the utility",
        lambda: _compose(project, "exec", "-T", "utility", "grep", "-rl", marker, "delivered").returncode == 0,
        FLOW_TIMEOUT,
    )
    _eventually(
        "a sealed file in the OpenSSH partner's inbox",
        lambda: bool(_compose(project, "exec", "-T", "openssh", "ls", "/srv/sftp/aggregator/inbox").stdout.strip()),
        FLOW_TIMEOUT,
    )
