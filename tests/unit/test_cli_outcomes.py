"""A run's per-document table stays a screenful however many documents the run moved."""

from __future__ import annotations

from rich.table import Table

from sftp_pipeline import cli


def _rows(results: list[str]) -> list[tuple[str, list[str]]]:
    return [(r, ["invoice", f"INV-{n:05d}.xml", f"T{n:05d}", r, ""]) for n, r in enumerate(results)]


def _printed(rows: list[tuple[str, list[str]]]) -> str:
    with cli.console.capture() as captured:
        cli._print_outcomes(
            Table("job", "file", "transfer", "result", "detail"),
            rows,
            {"failed": "red"},
            fine="uploaded",
            result_column=3,
            empty="nothing to send",
        )
    return captured.get()


def test_a_short_run_lists_every_document() -> None:
    text = _printed(_rows(["uploaded"] * 5))
    assert all(f"INV-{n:05d}.xml" in text for n in range(5))
    assert "more" not in text


def test_a_long_run_lists_the_problems_first_and_counts_the_rest() -> None:
    results = ["uploaded"] * 2_000
    results[1_500] = results[1_999] = "failed"
    results[700] = "pending"
    text = _printed(_rows(results))

    for n in (700, 1_500, 1_999):  # buried deep in the run, still on screen
        assert f"INV-{n:05d}.xml" in text
    assert text.count("INV-") == cli.OUTCOME_ROWS
    assert f"… and {2_000 - cli.OUTCOME_ROWS} more ({2_000 - cli.OUTCOME_ROWS} uploaded)" in text
    assert "status --limit 2000" in text


def test_nothing_to_show() -> None:
    assert _printed([]).strip() == "nothing to send"
