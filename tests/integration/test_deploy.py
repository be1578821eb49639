"""deploy/: the systemd units verify, the send unit runs every step, the compose file and the staging
set-up hold together, and the example sshd_config passes `sshd -t` and allows only our algorithms."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

from sftp_pipeline.clock import utc_now
from sftp_pipeline.config import load_config
from sftp_pipeline.keys import load_our_keys
from sftp_pipeline.transport import sshalgs
from tests.conftest import require_tool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = sorted(DEPLOY.glob("*.service")) + sorted(DEPLOY.glob("*.timer"))
INSTALLED_AT = "/opt/sftp-pipeline/.venv/bin/sftp-pipeline"
# Why 60 s: each of these commands takes well under a second; longer means it hung.
TOOL_TIMEOUT = 60


def _directives(path: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit or sshd file (keys may repeat), comments and sections left out."""
    found: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=") if "=" in line.split()[0] else line.partition(" ")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    program = shutil.which("sftp-pipeline") or str(Path(sys.executable).with_name("sftp-pipeline"))
    assert Path(program).exists(), "the sftp-pipeline entry point is not installed beside this python"
    for unit in UNITS:  # verify checks that ExecStart exists: point it at this installation
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED_AT, program))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / u.name) for u in UNITS)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr + result.stdout


def test_the_daemon_unit_runs_run_and_the_timers_catch_up() -> None:
    daemon = _directives(DEPLOY / "sftp-pipeline.service")
    assert daemon["ExecStart"][0].startswith(INSTALLED_AT) and daemon["ExecStart"][0].endswith(" run")
    assert "--log-json" in daemon["ExecStart"][0]
    for hardening in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "MemoryDenyWriteExecute"):
        assert daemon[hardening] == ["yes"], hardening
    assert daemon["ProtectSystem"] == ["strict"] and daemon["CapabilityBoundingSet"] == [""]
    for timer in DEPLOY.glob("*.timer"):
        directives = _directives(timer)
        assert directives["Persistent"] == ["true"], f"{timer.name}: a run missed while down must catch up"
        assert (DEPLOY / directives["Unit"][0]).exists()
        assert _directives(DEPLOY / directives["Unit"][0])["Type"] == ["oneshot"]


def _send_script() -> str:
    exec_start = _directives(DEPLOY / "sftp-pipeline-send.service")["ExecStart"][0]
    argv = shlex.split(exec_start)
    assert argv[:2] == ["/bin/sh", "-c"]
    return argv[2].replace("$$", "$")  # what systemd hands the shell


@pytest.mark.parametrize("failing", [None, "send", "collect"])
def test_the_send_unit_runs_every_step_and_fails_when_any_failed(tmp_path: Path, failing: str | None) -> None:
    log = tmp_path / "calls"
    fake = tmp_path / "sftp-pipeline"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in *" {failing} "*|*" {failing}") exit 1;; esac\n')
    fake.chmod(0o755)
    result = subprocess.run(
        ["/bin/sh", "-c", _send_script()],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SFTP_PIPELINE": str(fake)},
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    calls = log.read_text().splitlines()
    assert [c.split()[-1] for c in calls] == ["send", "collect", "receipts"]
    assert all(c.startswith("--log-json") for c in calls)
    assert result.returncode == (0 if failing is None else 1)


def test_the_compose_stack_is_complete() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"setup", "utility", "aggregator", "openssh"}
    for name in ("utility", "aggregator", "openssh"):
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert services["aggregator"]["depends_on"]["utility"]["condition"] == "service_healthy"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for service in services.values():
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert f" AS {build['target']}" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (DEPLOY.parent / source).exists(), f"Dockerfile copies {source}, which does not exist"
    setup = services["setup"]["entrypoint"]
    assert setup[1] == "/opt/sftp-pipeline/deploy/staging/setup.py" and (DEPLOY / "staging" / "setup.py").exists()


def test_the_staging_setup_writes_configurations_that_load_with_usable_keys(tmp_path: Path) -> None:
    script = DEPLOY / "staging" / "setup.py"

    def setup() -> str:
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "written" in setup()
    assert "already set up" in setup()
    aggregator = load_config(tmp_path / "aggregator" / "sftp-pipeline.toml")
    utility = load_config(tmp_path / "utility" / "sftp-pipeline.toml")
    for config in (aggregator, utility):
        load_our_keys(config, utc_now())
    assert aggregator.partners["utility"].sftp is not None and aggregator.partners["utility"].sftp.require_pq_kex
    legacy = aggregator.partners["legacy"].sftp
    assert legacy is not None and legacy.host == "openssh"
    openssh_key = (tmp_path / "openssh" / "ssh_host_ed25519_key.pub").read_text().split()[1]
    assert openssh_key in legacy.host_keys[0]
    assert (
        utility.partners["aggregator"].ssh_login_keys[0].split()[1]
        in (tmp_path / "openssh" / "aggregator.authorized_keys").read_text()
    )
    assert {j.kind for j in aggregator.jobs.values()} == {"send", "collect", "receipts"}


def test_the_partner_sshd_config_passes_sshd_t(tmp_path: Path) -> None:
    sshd = require_tool("sshd", "/usr/sbin/sshd")
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(tmp_path / "host_key"))
    (tmp_path / "host_key").chmod(0o600)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd -t wants its privilege-separation dir
    result = subprocess.run(
        [sshd, "-t", "-f", str(DEPLOY / "sshd_config.partners"), "-o", f"HostKey={tmp_path / 'host_key'}"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_partner_sshd_config_allows_only_our_algorithms_and_confines_partners() -> None:
    text = (DEPLOY / "sshd_config.partners").read_text()
    directives = _directives(DEPLOY / "sshd_config.partners")
    allowed = {
        "KexAlgorithms": set(sshalgs.KEX_ALGS) | sshalgs.PQ_KEX,
        "Ciphers": set(sshalgs.ENCRYPTION_ALGS),
        "MACs": set(sshalgs.MAC_ALGS),
        "HostKeyAlgorithms": set(sshalgs.HOST_KEY_ALGS),
        "PubkeyAcceptedAlgorithms": set(sshalgs.SIGNATURE_ALGS),
    }
    for name, ours in allowed.items():
        listed = directives[name][0].split(",")
        assert set(listed) <= ours, (
            f"{name} lists {set(listed) - ours}, which sftp_pipeline/transport/sshalgs.py refuses"
        )
    assert directives["KexAlgorithms"][0].split(",")[0] in sshalgs.PQ_KEX  # post-quantum first
    match = text[text.index("Match Group sftp-partners") :]
    assert "ChrootDirectory /srv/sftp/%u" in match and "ForceCommand internal-sftp -d /" in match
    for off in ("AllowTcpForwarding no", "X11Forwarding no", "PermitTunnel no", "PasswordAuthentication no"):
        assert off in match, off
