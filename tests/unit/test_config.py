import shutil
from pathlib import Path

import pytest

from sftp_pipeline.config import load_config
from sftp_pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def example(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "sftp-pipeline.example.toml", tmp_path / "sftp-pipeline.toml")
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs")
    return tmp_path / "sftp-pipeline.toml"


def test_the_shipped_example_loads(tmp_path: Path) -> None:
    config = load_config(example(tmp_path))
    assert config.party.id == "aggregator"
    assert config.state_dir == tmp_path / "state"
    assert config.keys.openpgp == tmp_path / "keys" / "openpgp.key"
    partner = config.partner("utility")
    assert partner.openpgp_cert == tmp_path / "keys" / "partners" / "utility.asc"
    assert partner.sftp is not None and partner.sftp.attempts == 3 and partner.sftp.dirs.inbox == "inbox"
    assert set(config.jobs) == {
        "invoices-to-utility",
        "aggregation-to-utility",
        "collect-from-utility",
        "receipts-from-utility",
        "morning-report",
    }
    assert config.jobs["invoices-to-utility"].watch and config.jobs["morning-report"].schedule == "30 6 * * 1-5"
    assert config.jobs["invoices-to-utility"].source == Path("/srv/sftp-pipeline/drop/invoices")


def test_unknown_key_names_file_key_and_fix(tmp_path: Path) -> None:
    path = example(tmp_path)
    path.write_text(path.read_text().replace("require_pq_kex = false", "require_pq_kx = true"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert str(path) in text and "partners.utility.sftp.require_pq_kx" in text and "fix:" in text


def test_bad_job_names_the_job_file(tmp_path: Path) -> None:
    path = example(tmp_path)
    job = tmp_path / "jobs" / "invoices-to-utility.toml"
    job.write_text(job.read_text().replace('document_type = "invoice"', 'document_type = "receipt"'))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(job) in str(info.value) and "document_type" in str(info.value)


def test_job_for_unknown_partner(tmp_path: Path) -> None:
    path = example(tmp_path)
    job = tmp_path / "jobs" / "invoices-to-utility.toml"
    job.write_text(job.read_text().replace('partner = "utility"', 'partner = "nobody"'))
    with pytest.raises(ConfigError, match="names partner 'nobody', which is not configured"):
        load_config(path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('host_keys = ["SHA256:', 'host_keys = ["nonsense', "neither a known_hosts line"),
        ("\nport = 22\n", "\nport = 70000\n", "port"),
        ('id = "aggregator"', 'id = "Bad Id"', "party.id"),
        (
            '# ssh_login_keys = ["ssh-ed25519 AAAA... utility"]',
            'ssh_login_keys = ["ecdsa-sha2-nistp256 AAAAE2VjZHNh utility"]',
            "NIST-curve .ECDSA. logins are refused.*ssh-keygen -t ed25519",
        ),
    ],
)
def test_values_are_validated(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = example(tmp_path)
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[party\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('schedule = "99 2 * * *"', "not a usable 5-field cron expression"),
        ('schedule = "0 0 31 2 *"', "not a usable 5-field cron expression"),
        ('timezone = "Mars/Olympus"', "unknown time zone"),
    ],
)
def test_schedules_are_validated(tmp_path: Path, line: str, message: str) -> None:
    path = example(tmp_path)
    job = tmp_path / "jobs" / "extra.toml"
    job.write_text('kind = "report"\n' + line + "\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(job) in str(info.value)


def test_a_report_job_needs_no_partner(tmp_path: Path) -> None:
    path = example(tmp_path)
    (tmp_path / "jobs" / "morning-report.toml").write_text(
        'kind = "report"\nschedule = "0 7 * * 1-5"\ntimezone = "America/Chicago"\n'
    )
    job = load_config(path).jobs["morning-report"]
    assert job.kind == "report" and job.email and job.schedule == "0 7 * * 1-5"


def test_sunday_is_7_as_in_crontab(tmp_path: Path) -> None:
    path = example(tmp_path)
    (tmp_path / "jobs" / "weekly.toml").write_text('kind = "report"\nschedule = "0 6 * * 7"\n')
    assert load_config(path).jobs["weekly"].schedule == "0 6 * * 7"
