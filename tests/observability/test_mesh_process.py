"""A whole `wiremesh run` with [observability]: JSON log lines from its node processes,
and each node's /metrics found through the registry."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

from tests.fixtures.meshes import WIREMESH, RunningMesh, write_mesh


def test_json_logs_and_metrics_of_a_running_mesh(tmp_path: Path) -> None:
    write_mesh(
        tmp_path,
        {"echo": "svc_echo:Echo"},
        extra='[observability]\nlog_format = "json"\n',
    )
    with RunningMesh(tmp_path) as mesh:
        line = mesh.wait_for_line(r'^\{.*"logger": "wiremesh\.node".*serving echo', timeout=20)
        event = json.loads(line.string)
        assert event["level"] == "info"
        assert event["node"].startswith("echo-")
        assert "trace_id" not in event  # tracing is off by default
        call = subprocess.run(
            [WIREMESH, "call", "echo.echo", '"hi"'],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert call.returncode == 0, call.stderr
        listed = subprocess.run(
            [WIREMESH, "nodes", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=30
        )
        assert listed.returncode == 0, listed.stderr
        (node,) = [json.loads(row) for row in listed.stdout.splitlines()]
        with urllib.request.urlopen(f"http://{node['metrics']}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    assert 'wiremesh_calls_handled_total{method="echo",service="echo",status="ok"} 1.0' in text
