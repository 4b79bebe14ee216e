"""docs/deploy.md: its configuration is valid, says what the page says it runs, and its
links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from wiremesh.runtime.config import config_from_text
from wiremesh.runtime.placement import place

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGE = (DOCS / "deploy.md").read_text()


def test_the_configuration_of_the_page_is_valid_and_places_what_the_table_says(
    tmp_path: Path,
) -> None:
    (toml,) = re.findall(r"```toml\n(.*?)```", PAGE, flags=re.S)
    config = config_from_text(toml, root=tmp_path)
    assert config.registry.redis
    assert config.mesh.name == "shop"
    app_1 = place(config, hostname="app-1")
    assert app_1.replicas == {"orders": 2, "billing": 1}
    app_2 = place(config, hostname="app-2.internal")
    assert app_2.replicas == {"orders": 1, "billing": 1}
    assert config.gateway.enabled is True
    assert "| app-1 | `wiremesh run --host app-1` | two `orders` nodes, a `billing` node" in PAGE


def _anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_link_of_the_page_names_a_page_and_a_heading_that_exist() -> None:
    links = re.findall(r"\]\(([a-z]+\.md)(?:#([\w-]+))?\)", PAGE)
    assert links
    for page, anchor in links:
        target = DOCS / page
        assert target.is_file(), page
        if anchor:
            headings = re.findall(r"^#+ (.*)$", target.read_text(), flags=re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{page}#{anchor}"
