r"""wiremesh's docstrings, written in reST's habits, read as Markdown by the docs site.

A griffe extension (``mkdocs.yml`` loads it for mkdocstrings): before a docstring is
rendered, a Sphinx role (``:func:`rpc```, ``:class:`~wiremesh.session.Sessions```)
becomes inline code of the name it shows, and a literal block (after a ``::``) or a
doctest becomes a fenced block. The source's docstrings stay as they are.

>>> print(to_markdown("Mark it with :func:`rpc`, see :class:`~wiremesh.Sessions`::\n\n    x = 1"))
Mark it with `rpc`, see `Sessions`:
<BLANKLINE>
```
x = 1
```
"""

from __future__ import annotations

import re
from typing import Any

import griffe

#: a Sphinx cross-reference role: its target, and a ``~`` that keeps the last name only
ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")
#: the first line of a doctest (the block ends at the next blank line)
PROMPT = re.compile(r"^\s*>>> ")


def indentation(line: str) -> int:
    return len(line) - len(line.lstrip())


def to_markdown(text: str) -> str:
    """``text``, a reST-flavoured docstring, as Markdown.

    A literal block (the indented lines after a ``::``) and a doctest become fenced blocks
    at the left margin: inside a list item indented by two, as reST allows, Markdown would
    not see an indented block as code.
    """
    text = ROLE.sub(lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", text)
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if PROMPT.match(line):
            end = next((j for j in range(i, len(lines)) if not lines[j].strip()), len(lines))
            out += ["```pycon", *fenced(lines[i:end]), "```"]
            i = end
            continue
        if not line.endswith("::"):
            out.append(line)
            i += 1
            continue
        out.append("" if line.strip() == "::" else line[:-1])
        # the block: every line after it that is blank or indented deeper than it
        margin, end = indentation(line), i + 1
        while end < len(lines) and (not lines[end].strip() or indentation(lines[end]) > margin):
            end += 1
        while end > i + 1 and not lines[end - 1].strip():
            end -= 1
        block = lines[i + 1 : end]
        if any(b.strip() for b in block):
            out += ["", "```", *fenced(block), "```"]
        i = end
    return "\n".join(out)


def fenced(block: list[str]) -> list[str]:
    """``block``'s lines without the indentation they share, and without blank edges."""
    while block and not block[0].strip():
        block = block[1:]
    margin = min(indentation(b) for b in block if b.strip())
    return [b[margin:] for b in block]


class RestDocstrings(griffe.Extension):
    """Rewrites each object's docstring with :func:`to_markdown` as griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
