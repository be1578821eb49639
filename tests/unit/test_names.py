from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sftp_pipeline.names import (
    TRANSFER_ID_RE,
    is_safe_name,
    is_temporary,
    new_transfer_id,
    parse_sealed_name,
    safe_join,
    sanitise,
    sealed_name,
)


def test_transfer_ids_sort_by_time_and_are_unique() -> None:
    early = new_transfer_id(datetime(2026, 1, 1, tzinfo=UTC))
    late = new_transfer_id(datetime(2026, 1, 2, tzinfo=UTC))
    assert TRANSFER_ID_RE.match(early) and TRANSFER_ID_RE.match(late)
    assert early < late
    assert len({new_transfer_id(datetime(2026, 1, 1, tzinfo=UTC)) for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    "name", ["..", "../etc/passwd", "/etc/passwd", "a/b", "a\\b", ".hidden", "x\x00y", "bad\nname", "", "a..b", "é"]
)
def test_unsafe_names_never_reach_a_join(name: str) -> None:
    assert not is_safe_name(name)
    with pytest.raises(ValueError, match="unsafe file name"):
        safe_join("/tmp", name)


def test_sealed_name_round_trip() -> None:
    name = sealed_name("01JDQ6Z6M2W4K8T9V0B3C5D7EF", "invoice", "INV 2026/42.xml")
    assert str(name) == "01JDQ6Z6M2W4K8T9V0B3C5D7EF.invoice.INV_2026_42.xml.pgp"
    assert parse_sealed_name(str(name)) == name
    assert name.temp.startswith(".") and name.temp.endswith(".part")


@pytest.mark.parametrize(
    "bad",
    [
        "x.pgp",
        "01JDQ6Z6M2W4K8T9V0B3C5D7EF.invoice.pgp",
        "01JDQ6Z6M2W4K8T9V0B3C5D7EF.INVOICE.a.pgp",
        "01JDQ6Z6M2W4K8T9V0B3C5D7EU.invoice.a.pgp",
        "../01JDQ6Z6M2W4K8T9V0B3C5D7EF.invoice.a.pgp",
    ],
)
def test_parse_sealed_name_is_strict(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_sealed_name(bad)


@given(st.text(max_size=300))
def test_sanitise_always_yields_a_safe_name(raw: str) -> None:
    assert is_safe_name(sanitise(raw))


@pytest.mark.parametrize("name", [".x", "a.part", "a.tmp", "A.TMP", "~lock", "a.xml~", "x.filepart"])
def test_temporary_names(name: str) -> None:
    assert is_temporary(name)
    assert not is_temporary("invoice.xml")
