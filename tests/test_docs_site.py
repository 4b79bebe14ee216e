"""The docs site (`make docs`) builds with its API reference and nothing from a CDN, and
`make bench`'s charts are SVG that name what they draw."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

import wiremesh

ROOT = Path(__file__).resolve().parents[1]


def load_run_all() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_site_builds_strictly_with_the_api_reference_and_no_cdn(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert built.returncode == 0, built.stderr

    # nothing is loaded from another host: no script, stylesheet or font from a CDN
    remote = re.compile(r"""(?:<script\b[^>]*\bsrc|<link\b[^>]*\bhref)\s*=\s*["']?(?:https?:)?//""")
    for page in site.rglob("*.html"):
        html = page.read_text()
        assert not remote.findall(html), page.relative_to(site)
        # Material's bundle would fetch mermaid from a CDN for a diagram
        assert 'class="mermaid"' not in html, page.relative_to(site)
    for sheet in site.rglob("*.css"):
        assert not re.search(r"""(?:url\(|@import)\s*["']?(?:https?:)?//""", sheet.read_text())

    summary = (inspect.getdoc(wiremesh.Service) or "").split(".")[0]
    assert summary
    assert summary in (site / "reference" / "service" / "index.html").read_text()


def test_the_benchmark_charts_are_reproducible_svg_naming_each_ratio(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    run_all = load_run_all()
    results = {
        "rpc": {"p50_ratio": 0.62, "throughput_ratio": 0.7, "rounds": 3, "quick": True},
        "links": {
            "call_p50_ratio": 0.66,
            "multicast_p50_us_by_nodes": [
                {"nodes": n, "wiremesh": 200 + 40 * n, "gather_unary": 300 + 120 * n}
                for n in (1, 2, 4, 8)
            ],
        },
        "multihost": {"redis_cpu_50": 3.1, "redis_cpu_200": 12.5, "redis_settled_50": True},
    }

    drawn = run_all.charts(results, tmp_path / "a")

    assert set(drawn) == {
        "ratios.svg",
        "links-multicast_p50_us_by_nodes.svg",
        "multihost-redis_cpu.svg",
    }
    texts = {}
    for name in drawn:
        root = ET.parse(tmp_path / "a" / name).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        texts[name] = " ".join(root.itertext())
    for label in ("rpc: p50_ratio", "rpc: throughput_ratio", "links: call_p50_ratio"):
        assert label in texts["ratios.svg"]
    assert "target" in texts["ratios.svg"]
    assert "wiremesh" in texts["links-multicast_p50_us_by_nodes.svg"]
    assert "gather_unary" in texts["links-multicast_p50_us_by_nodes.svg"]

    # the same results give the same bytes: a chart changes in git only when a figure does
    run_all.charts(results, tmp_path / "b")
    for name in drawn:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
