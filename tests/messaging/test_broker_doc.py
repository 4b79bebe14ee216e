"""``docs/protocol.md`` reproduces the embedded broker's proto file exactly."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BROKER_PROTO = ROOT / "proto" / "wiremesh" / "broker" / "v1" / "broker.proto"


def test_broker_proto_is_reproduced_exactly() -> None:
    proto = BROKER_PROTO.read_text(encoding="utf-8")
    doc = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert f"```proto\n{proto}```" in doc, (
        f"docs/protocol.md must reproduce {BROKER_PROTO.relative_to(ROOT)} in a proto block"
    )


def test_mesh_json_documents_every_field() -> None:
    from dataclasses import fields

    from wiremesh.runtime.meshfile import MeshFile

    doc = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    for field in fields(MeshFile):
        assert f"| `{field.name}` |" in doc, f"mesh.json field {field.name!r} is not documented"
