"""Tests of wiremesh.runtime.toml_positions: the lines of keys in a TOML text (more cases
through the loader's messages in test_config.py)."""

from __future__ import annotations

import doctest

from wiremesh.runtime import toml_positions
from wiremesh.runtime.toml_positions import definitions, dotted, line_of


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(toml_positions).failed == 0


def test_a_key_path_is_written_as_toml_spells_it() -> None:
    assert dotted(("mesh", "name")) == "mesh.name"
    assert dotted(("services", "my svc", "groups", 0)) == 'services."my svc".groups[0]'
    assert dotted(("env", "é")) == 'env."é"'
    assert dotted(()) == ""


def test_every_key_of_an_inline_table_and_an_array_has_its_line() -> None:
    text = 'a = { b = 1, c = [\n  "x",\n  { d = 2 },\n] }\n'
    found = definitions(text)
    assert found[("a",)] == 1
    assert found[("a", "b")] == 1
    assert found[("a", "c", 0)] == 2
    assert found[("a", "c", 1, "d")] == 3
    assert line_of(found, ("a", "c", 1, "missing")) == 3
    assert line_of(found, ("z",)) is None
