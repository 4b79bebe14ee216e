r"""Where a key of a TOML text is defined: the line that error messages point to.

:func:`locate` answers "on which line is ``services.web.replicas``?" for a text that
:mod:`tomllib` already accepted, which itself tells values but not positions. The
:class:`_Scanner` reads the text once, forgivingly (what it does not understand it skips
to the end of the line), and records the first line of every key path it meets, defined
explicitly (``a.b = 1``, ``[a.b]``) or implicitly (the ``a`` of both), with array elements
by index. :func:`dotted` writes a key path back the way TOML spells it.

    >>> text = '[mesh]\nname = "shop"\n\n[services.web]\ngroups = ["eu", "us"]\n'
    >>> locate(text, ("services", "web", "groups", 1))
    5
    >>> locate(text, ("services", "web", "replicas"))  # not defined: its table's line
    4
    >>> dotted(("services", "web shop", "groups", 1))
    'services."web shop".groups[1]'
"""

from __future__ import annotations

import bisect
import json
import re

__all__ = ["KeyPath", "definitions", "dotted", "line_of", "locate"]

#: a path of keys into a TOML document: table and key names, and array indexes
KeyPath = tuple[str | int, ...]

#: a key TOML lets stand without quotes
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dotted(loc: KeyPath) -> str:
    """``loc`` written as a TOML dotted key; list indexes as ``[i]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        key = part if BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
        text = f"{text}.{key}" if text else key
    return text


def locate(text: str, loc: KeyPath) -> int | None:
    """The 1-based line of ``text`` (valid TOML) where the key path ``loc`` is defined.

    Understands ``[a.b]`` / ``[[a.b]]`` / ``[a."b c"]`` headers, ``key = value`` and dotted
    ``a.b = value`` lines, inline tables and (multi-line) arrays, whose elements are found by
    index. A path that is not defined falls back to its longest defined prefix, so a missing
    key reports the line of its table's header. None when not even the first key is found.
    """
    return line_of(definitions(text), loc)


def line_of(found: dict[KeyPath, int], loc: KeyPath) -> int | None:
    """The line of ``loc``, or of its longest prefix, in ``found`` (:func:`definitions`)."""
    for size in range(len(loc), 0, -1):
        line = found.get(loc[:size])
        if line is not None:
            return line
    return None


def definitions(text: str) -> dict[KeyPath, int]:
    """Every key path defined in ``text``, explicitly or implicitly, with its first line."""
    scanner = _Scanner(text)
    scanner.run()
    return scanner.found


class _Stop(Exception):
    """The scanner met something it does not understand; it skips to the next line."""


_SCALAR = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}:\d{2})?"
    r"|[^\s,\]}#]+"
)
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class _Scanner:
    """A forgiving TOML reader that records where keys are, not what their values are."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.found: dict[KeyPath, int] = {}
        self._starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]

    def run(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip(newlines=True)
            if self.pos >= len(self.text):
                return
            line = self._line()
            try:
                if self._peek() == "[":
                    double = self.text.startswith("[[", self.pos)
                    self.pos += 2 if double else 1
                    key = self._key()
                    self._skip()
                    self._expect("]]" if double else "]")
                    table = key
                    self._define(table, line)
                else:
                    path = (*table, *self._key())
                    self._skip()
                    self._expect("=")
                    self._define(path, line)
                    self._value(path)
            except _Stop:
                pass
            self._skip_line()

    # -- helpers

    def _line(self) -> int:
        return bisect.bisect_right(self._starts, self.pos)

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise _Stop
        self.pos += len(token)

    def _skip(self, *, newlines: bool = False) -> None:
        blanks = " \t\r\n" if newlines else " \t"
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in blanks:
                self.pos += 1
            elif char == "#" and newlines:
                self._skip_line()
            else:
                return

    def _skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1

    def _define(self, path: KeyPath, line: int) -> None:
        for size in range(1, len(path) + 1):
            self.found.setdefault(path[:size], line)

    # -- keys and values

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip()
            char = self._peek()
            if char == '"':
                parts.append(self._basic_string())
            elif char == "'":
                parts.append(self._literal_string())
            else:
                match = BARE_KEY.match(self.text, self.pos)
                if match is None:
                    raise _Stop
                parts.append(match.group())
                self.pos = match.end()
            self._skip()
            if self._peek() != ".":
                return tuple(parts)
            self.pos += 1

    def _value(self, path: KeyPath) -> None:
        self._skip()
        char = self._peek()
        if self.text.startswith('"""', self.pos):
            self._multiline_string('"""')
        elif self.text.startswith("'''", self.pos):
            self._multiline_string("'''")
        elif char == '"':
            self._basic_string()
        elif char == "'":
            self._literal_string()
        elif char == "[":
            self._array(path)
        elif char == "{":
            self._inline_table(path)
        else:
            match = _SCALAR.match(self.text, self.pos)
            if match is None:
                raise _Stop
            self.pos = match.end()

    def _array(self, path: KeyPath) -> None:
        self.pos += 1
        index = 0
        while True:
            self._skip(newlines=True)
            if self._peek() == "]":
                self.pos += 1
                return
            item = (*path, index)
            self._define(item, self._line())
            self._value(item)
            index += 1
            self._skip(newlines=True)
            if self._peek() == ",":
                self.pos += 1
            elif self._peek() == "]":
                self.pos += 1
                return
            else:
                raise _Stop

    def _inline_table(self, path: KeyPath) -> None:
        self.pos += 1
        self._skip()
        if self._peek() == "}":
            self.pos += 1
            return
        while True:
            line = self._line()
            key = (*path, *self._key())
            self._expect("=")
            self._define(key, line)
            self._value(key)
            self._skip()
            if self._peek() == ",":
                self.pos += 1
            elif self._peek() == "}":
                self.pos += 1
                return
            else:
                raise _Stop

    def _basic_string(self) -> str:
        text, i = self.text, self.pos + 1
        out: list[str] = []
        while i < len(text):
            char = text[i]
            if char == '"':
                self.pos = i + 1
                return "".join(out)
            if char == "\n":
                break
            if char != "\\":
                out.append(char)
                i += 1
                continue
            escape = text[i + 1 : i + 2]
            if escape in _ESCAPES:
                out.append(_ESCAPES[escape])
                i += 2
            elif escape in ("u", "U"):
                size = 4 if escape == "u" else 8
                try:
                    out.append(chr(int(text[i + 2 : i + 2 + size], 16)))
                except ValueError:
                    break
                i += 2 + size
            else:
                break
        raise _Stop

    def _literal_string(self) -> str:
        end = self.text.find("'", self.pos + 1)
        if end < 0 or "\n" in self.text[self.pos : end]:
            raise _Stop
        value = self.text[self.pos + 1 : end]
        self.pos = end + 1
        return value

    def _multiline_string(self, quotes: str) -> None:
        text, i = self.text, self.pos + 3
        while i < len(text):
            if quotes == '"""' and text[i] == "\\":
                i += 2
            elif text.startswith(quotes, i):
                i += 3
                extra = 0
                while extra < 2 and text.startswith(quotes[0], i):
                    i += 1
                    extra += 1
                self.pos = i
                return
            else:
                i += 1
        raise _Stop
