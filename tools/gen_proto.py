"""Generate the Python code for every .proto file under proto/ into src/wiremesh/proto/.

Run after editing a .proto file: ``python tools/gen_proto.py``. A test regenerates into a
temporary folder and fails when the committed code is out of step.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
OUT = ROOT / "src" / "wiremesh" / "proto"


def generate(out: Path) -> list[Path]:
    """Generate into ``out`` (flat: one ``<name>_pb2.py`` and ``.pyi`` per file)."""
    from grpc_tools import protoc

    files = sorted(PROTO.rglob("*.proto"))
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for proto in files:
            args = [
                "protoc",
                f"-I{PROTO}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                str(proto),
            ]
            if protoc.main(args) != 0:
                raise SystemExit(f"protoc failed on {proto}")
        for made in sorted(Path(tmp).rglob("*_pb2.py*")):
            target = out / made.name
            shutil.copyfile(made, target)
            written.append(target)
    return written


if __name__ == "__main__":
    for path in generate(OUT):
        print(path.relative_to(ROOT))
    sys.exit(0)
