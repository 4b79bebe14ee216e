"""The committed protobuf code is exactly what ``tools/gen_proto.py`` makes from ``proto/``.

When this fails, a ``.proto`` file changed (or grpcio-tools did) without regenerating:
run ``python tools/gen_proto.py`` and commit the result.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "gen_proto.py"
COMMITTED = ROOT / "src" / "wiremesh" / "proto"


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wiremesh_tools_gen_proto", TOOL)
    assert spec is not None and spec.loader is not None, f"cannot load {TOOL}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed_files() -> dict[str, bytes]:
    paths = [*COMMITTED.glob("*_pb2.py"), *COMMITTED.glob("*_pb2.pyi")]
    return {p.name: p.read_bytes() for p in sorted(paths)}


def test_every_proto_file_has_committed_code() -> None:
    protos = sorted((ROOT / "proto").rglob("*.proto"))
    assert protos, "no .proto file under proto/"
    names = set(committed_files())
    for proto in protos:
        stem = proto.stem
        assert {f"{stem}_pb2.py", f"{stem}_pb2.pyi"} <= names, (
            f"{proto.relative_to(ROOT)} has no generated code in {COMMITTED.relative_to(ROOT)}; "
            "run: python tools/gen_proto.py"
        )


def test_generated_code_is_byte_identical(tmp_path: Path) -> None:
    written = load_tool().generate(tmp_path)
    fresh = {p.name: p.read_bytes() for p in sorted(written)}
    committed = committed_files()
    assert fresh, "tools/gen_proto.py generated nothing"
    assert sorted(fresh) == sorted(committed), (
        "generated and committed files differ in name; run: python tools/gen_proto.py"
    )
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"out of step with proto/: {', '.join(stale)}; run: python tools/gen_proto.py"
