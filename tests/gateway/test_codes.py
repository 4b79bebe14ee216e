"""``wiremesh.gateway.codes``: the close codes, against the docs and the JavaScript client."""

from __future__ import annotations

import re
from pathlib import Path

from wiremesh.errors import STATUS_TABLE
from wiremesh.gateway.codes import RECONNECT, SENDABLE, CloseCode, sendable

ROOT = Path(__file__).resolve().parents[2]


def table_after(path: Path, heading: str) -> list[list[str]]:
    """The rows of the first Markdown table after ``heading``, as lists of cells."""
    text = path.read_text(encoding="utf-8")
    start = text.index(heading)
    rows: list[list[str]] = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # past the header and its rule


def reconnects(cell: str) -> bool:
    """A table's "reconnects" column: "yes", "yes, after backoff"; not "no" nor "only
    with a token provider"."""
    return cell.startswith("yes")


def test_the_gateway_guide_lists_every_close_code_by_its_name() -> None:
    rows = table_after(ROOT / "docs" / "gateway.md", "## Close codes")
    documented = {int(code): (name.strip("`"), reconnects(again)) for code, name, _, again in rows}
    assert documented == {code.value: (code.name, code in RECONNECT) for code in CloseCode}


def test_the_protocol_lists_close_codes_of_the_enum_with_the_same_reconnections() -> None:
    rows = table_after(ROOT / "docs" / "protocol.md", "### 13.4 Close codes")
    assert rows, "no close-code table in protocol.md"
    for code, _, again in rows:
        assert int(code) in set(CloseCode), code
        assert reconnects(again) == (CloseCode(int(code)) in RECONNECT), code


def test_the_javascript_client_reconnects_after_the_same_codes() -> None:
    source = (ROOT / "clients" / "js" / "wiremesh.js").read_text(encoding="utf-8")
    found = re.search(r"RECONNECT_CODES = new Set\(\[([\d,\s]+)\]\)", source)
    assert found is not None
    assert {int(code) for code in found.group(1).split(",")} == RECONNECT
    names = re.search(r"export const CloseCode = Object\.freeze\(\{(.*?)\}\);", source, re.S)
    assert names is not None
    values = {int(value) for value in re.findall(r":\s*(\d+)", names.group(1))}
    assert values <= set(CloseCode)


def test_a_close_frame_carries_neither_code_that_only_reports_a_lost_connection() -> None:
    assert CloseCode.NO_STATUS not in SENDABLE and CloseCode.ABNORMAL not in SENDABLE
    assert not sendable(CloseCode.ABNORMAL)
    assert sendable(CloseCode.NORMAL) and sendable(3000) and sendable(4999)
    assert not sendable(999) and not sendable(2999) and not sendable(5000)


def test_every_status_closes_with_a_code_a_close_frame_carries() -> None:
    for status, info in STATUS_TABLE.items():
        assert sendable(info.ws_close_code), status
        if info.ws_close_code < 3000:  # the RFC's: one of ours, by name
            assert info.ws_close_code in set(CloseCode), status
