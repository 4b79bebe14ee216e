"""``docs/protocol.md`` says what the code does: its tables are checked against the code.

The status table is generated from :data:`wiremesh.errors.STATUS_TABLE` (only the
*meaning* column is free text). After changing the table in the code, print the new
markdown, keeping the meanings already written, with::

    python tests/test_protocol_doc.py
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from wiremesh import errors
from wiremesh.core.codec import CODECS
from wiremesh.errors import STATUS_TABLE, Status, WiremeshError, error_class_for
from wiremesh.transport.wire import (
    CALLER_KEY,
    CODEC_KEY,
    ERROR_KEY,
    RESERVED_KEYS,
    RESERVED_PREFIXES,
    error_from_rpc_error,
)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "protocol.md"
REGISTRY_PROTO = ROOT / "proto" / "wiremesh" / "registry" / "v1" / "registry.proto"

STATUS_HEADER = (
    "| wiremesh status | exception class | gRPC code | HTTP status | WebSocket close code "
    "| meaning |"
)
INCOMING_HEADER = "| incoming gRPC code | wiremesh status | rebuilt as |"


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def table_rows(text: str, header: str) -> list[str]:
    """The body rows of the markdown table that starts with ``header``."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == header]
    assert len(starts) == 1, f"expected one table headed {header!r} in {DOC.name}"
    start = starts[0]
    assert set(lines[start + 1].replace("|", "").split()) <= {"---", ":--", "--:", ":-:"}, (
        f"the table headed {header!r} has no separator row"
    )
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line.strip())
    return rows


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def classes_with(status: Status) -> list[type[WiremeshError]]:
    """The public error classes of ``status``: the one a caller rebuilds first, then the
    others in the order the module defines them."""
    first = error_class_for(None, status)
    others = [
        value
        for name, value in vars(errors).items()
        if name in errors.__all__
        and isinstance(value, type)
        and issubclass(value, WiremeshError)
        and value.status is status
        and value is not first
    ]
    return [first, *others]


def grpc_cell(code: grpc.StatusCode) -> str:
    return f"`{code.name}` ({code.value[0]})"


def status_row(status: Status, meaning: str) -> str:
    info = STATUS_TABLE[status]
    classes = ", ".join(f"`{cls.__name__}`" for cls in classes_with(status))
    code = grpc_cell(grpc.StatusCode[info.grpc_name])
    return (
        f"| `{status.value}` | {classes} | {code} | {info.http_status} "
        f"| {info.ws_close_code} | {meaning} |"
    )


def incoming_row(code: grpc.StatusCode) -> str:
    rpc_error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "x")
    error = error_from_rpc_error(rpc_error, node=None)
    return f"| {grpc_cell(code)} | `{error.status.value}` | `{type(error).__name__}` |"


def render_status_table(meanings: dict[Status, str]) -> str:
    lines = [STATUS_HEADER, "| --- | --- | --- | --- | --- | --- |"]
    lines += [status_row(s, meanings.get(s, "TODO: what it means")) for s in STATUS_TABLE]
    return "\n".join(lines)


def documented_meanings(text: str) -> dict[Status, str]:
    meanings = {}
    for row in table_rows(text, STATUS_HEADER):
        first, *_, meaning = cells(row)
        try:
            meanings[Status(first.strip("`"))] = meaning
        except ValueError:
            continue
    return meanings


def test_status_table_has_one_row_per_status_in_order() -> None:
    rows = table_rows(doc_text(), STATUS_HEADER)
    documented = [cells(row)[0].strip("`") for row in rows]
    assert documented == [status.value for status in STATUS_TABLE]


@pytest.mark.parametrize("status", list(STATUS_TABLE), ids=lambda s: s.value)
def test_status_table_row_matches_the_code(status: Status) -> None:
    rows = {cells(row)[0].strip("`"): row for row in table_rows(doc_text(), STATUS_HEADER)}
    row = rows.get(status.value)
    assert row is not None, f"no row for {status.value!r}"
    meaning = cells(row)[-1]
    assert len(cells(row)) == 6, f"the row of {status.value!r} must have 6 cells: {row}"
    assert meaning, f"the row of {status.value!r} has no meaning"
    assert row == status_row(status, meaning)


def test_incoming_grpc_code_table_matches_the_client() -> None:
    rows = table_rows(doc_text(), INCOMING_HEADER)
    expected = [incoming_row(code) for code in grpc.StatusCode if code is not grpc.StatusCode.OK]
    assert rows == expected


def test_registry_proto_is_reproduced_exactly() -> None:
    proto = REGISTRY_PROTO.read_text(encoding="utf-8")
    assert f"```proto\n{proto}```" in doc_text(), (
        f"docs/protocol.md must reproduce {REGISTRY_PROTO.relative_to(ROOT)} in a proto block"
    )


def test_metadata_keys_and_codecs_are_documented() -> None:
    text = doc_text()
    for key in (CODEC_KEY, CALLER_KEY, ERROR_KEY, *RESERVED_PREFIXES, *RESERVED_KEYS):
        assert f"`{key}" in text, f"metadata key or prefix {key!r} is not documented"
    for codec in CODECS:
        assert f"| `{codec}`" in text, f"codec {codec!r} has no row in the codec table"


if __name__ == "__main__":
    print(render_status_table(documented_meanings(doc_text())))
