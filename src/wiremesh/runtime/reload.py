"""Hot reload (``wiremesh run --reload``): which services a change of source concerns, and
when a burst of changes is over; :class:`Reloader` watches the files (with watchfiles) and
asks the supervisor to replace the nodes of those services.

Everything but :class:`Reloader`, :func:`require_watchfiles` and :func:`read_source` is
free of I/O: paths and source text in, decisions out (a :class:`SourceTree` reads through
the function it is given).

**Which files.** The ``.py`` files under the folders of ``mesh.python_path`` (default: the
mesh folder), and under the folder a service's package was imported from when that lies
outside them (an editable install, say). Left out (:func:`is_source`): hidden folders
(``.git``, ``.venv``, the default data folder ``.wiremesh``), ``__pycache__``, ``venv``,
``site-packages``, ``node_modules``, the mesh's data folder wherever it is, and editors'
files (a name that begins with ``.`` or ``#``, or does not end in ``.py``).

**Which services.** A service's *sources* are its target's module and every module that
module imports, at any depth and wherever the import stands (in a function too, or as
``importlib.import_module("a.literal")``), as far as they are files under those folders
(:class:`SourceTree`, which reads them with :mod:`ast`: no code runs). A changed file
reloads each service whose sources hold it, before or after the change: a helper shared
by two services reloads both (:func:`services_to_reload`). A changed file that no
service's sources hold (one imported by a name built at run time, or a test) reloads
every service, since what the source does not show may still be used.

**When.** The changes of one burst (an editor saving several files, a formatter, a
``git checkout``) make one reload, :data:`QUIET` seconds after the burst's last change
(:class:`Burst`). Changes made while a reload runs make the next one.

**A change that breaks.** A changed file of the services due that does not compile reloads
nothing: one line names it (``pricing.py:12: '(' was never closed``), the nodes running go
on, and the next change tries again, those services still due. A node of the new code that
fails to start (an error raised while importing, say) is given up, and the old nodes keep
serving (see :meth:`~wiremesh.runtime.supervisor.Supervisor.replace`).

**How.** For each service due, one node at a time: a new node is started, and once the
registry shows it serving, the old one drains as at a shutdown (SIGTERM: it takes no new
work, the work in flight finishes); then the next one.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from wiremesh.errors import ConfigError

if TYPE_CHECKING:
    from watchfiles import Change

__all__ = [
    "INSTALL_HINT",
    "LONGEST",
    "QUIET",
    "Burst",
    "ReloadHost",
    "Reloader",
    "SourceTree",
    "imports_of",
    "is_source",
    "read_source",
    "require_watchfiles",
    "services_to_reload",
]

log = logging.getLogger("wiremesh.reload")

#: seconds without a change after which a burst of changes reloads
QUIET = 0.3
#: seconds after its first change that a burst reloads even if changes keep coming
LONGEST = 3.0
#: what to install for ``--reload``
INSTALL_HINT = "pip install 'wiremesh[reload]'"
#: folders whose files are never a service's source (hidden ones are left out as well)
IGNORED_FOLDERS = frozenset(
    {"__pycache__", "node_modules", "site-packages", "dist-packages", "venv"}
)


def require_watchfiles() -> None:
    """Raise a :class:`ConfigError` that says what to install when watchfiles is missing."""
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"--reload needs the watchfiles package, which is not installed: {INSTALL_HINT}"
        ) from None


# ------------------------------------------------------------------------- which files


def is_source(path: Path, roots: Sequence[Path], skip: Sequence[Path] = ()) -> bool:
    """Whether a change to ``path`` may concern a service: a ``.py`` file under one of
    ``roots``, neither under ``skip`` (the data folder) nor under a hidden or tool folder
    of that root, and not an editor's file.

    >>> roots = [Path("/srv/shop")]
    >>> is_source(Path("/srv/shop/pricing.py"), roots)
    True
    >>> is_source(Path("/srv/shop/__pycache__/pricing.cpython-311.pyc"), roots)
    False
    >>> is_source(Path("/srv/shop/.venv/lib/x.py"), roots)
    False
    >>> is_source(Path("/srv/shop/.#pricing.py"), roots)  # an editor's lock file
    False
    """
    if path.suffix != ".py" or path.name.startswith((".", "#")):
        return False
    if any(path.is_relative_to(folder) for folder in skip):
        return False
    for root in roots:
        if path.is_relative_to(root):
            folders = path.relative_to(root).parts[:-1]
            # only the folders below the root: the root itself may well sit in a hidden one
            return not any(f.startswith(".") or f in IGNORED_FOLDERS for f in folders)
    return False


def imports_of(source: str, module: str, *, package: bool = False) -> frozenset[str]:
    """The modules that the source of ``module`` may import, as absolute names, each with
    its parent packages (importing ``a.b`` runs ``a`` too). ``from a import b`` names both
    ``a`` and ``a.b``, since ``b`` may be a module. ``package``: the source is the
    ``__init__.py`` of ``module``. Raises :class:`SyntaxError` (or :class:`ValueError`)
    when the source does not parse.

    >>> sorted(imports_of("from . import rates\\nimport shop.tax as t", "shop.pricing"))
    ['shop', 'shop.rates', 'shop.tax']
    """
    tree = ast.parse(source)
    here = (module if package else module.rpartition(".")[0]).split(".")
    here = [] if here == [""] else here
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 >= len(here):
                    continue  # above the top package: the import fails, it names nothing
                base = here[: len(here) - (node.level - 1)]
                parts = [*base, *(node.module.split(".") if node.module else [])]
            else:
                parts = node.module.split(".") if node.module else []
            if not parts:
                continue
            target = ".".join(parts)
            names.add(target)
            names.update(f"{target}.{a.name}" for a in node.names if a.name != "*")
        elif isinstance(node, ast.Call) and _imports_by_name(node):
            names.add(node.args[0].value)  # type: ignore[attr-defined]
    return frozenset(parent for name in names for parent in _with_parents(name))


def _imports_by_name(call: ast.Call) -> bool:
    """``importlib.import_module("a.b")`` or ``__import__("a.b")`` with a literal name."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not call.args:
        return False
    first = call.args[0]
    return (
        isinstance(first, ast.Constant)
        and isinstance(first.value, str)
        and bool(first.value)
        and not first.value.startswith(".")
    )


def _with_parents(name: str) -> Iterable[str]:
    parts = name.split(".")
    return (".".join(parts[:i]) for i in range(1, len(parts) + 1))


def read_source(path: Path) -> str | None:
    """The text of ``path``; None when there is no such file (or it cannot be read)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


class SourceTree:
    """The modules under ``roots`` (the folders that import them, in order), as their
    source shows them: which files a module is, and what each imports.

    Sources are read through ``read`` (a path to its text, or None when there is no such
    file) once, until :meth:`forget` says they changed. A file that does not parse keeps
    the imports it had when it last did, and is listed in :attr:`broken` until it parses.
    """

    def __init__(
        self, roots: Sequence[Path], read: Callable[[Path], str | None] = read_source
    ) -> None:
        self.roots = tuple(roots)
        self._read = read
        # (file, module name) -> what it imports; None: there is no such file
        self._imports: dict[tuple[Path, str], frozenset[str] | None] = {}
        self._last_good: dict[tuple[Path, str], frozenset[str]] = {}
        #: the files that do not parse now: file -> ``file:line: message``
        self.broken: dict[Path, str] = {}
        #: how a file is named in :attr:`broken` (a path relative to the mesh folder, say)
        self.shown: Callable[[Path], str] = str

    def forget(self, paths: Iterable[Path]) -> None:
        """``paths`` changed (or appeared, or went): read them again when asked."""
        changed = set(paths)
        for key in [key for key in self._imports if key[0] in changed]:
            del self._imports[key]
        for path in changed:
            self.broken.pop(path, None)

    def files_of(self, module: str) -> frozenset[Path]:
        """The files of ``module`` and of every module it imports, at any depth, under
        the roots."""
        files: set[Path] = set()
        seen: set[str] = set()
        todo = list(_with_parents(module))
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for path, package in self._candidates(name):
                imported = self._imports_at(path, name, package)
                if imported is not None:
                    files.add(path)
                    todo.extend(imported - seen)
        return frozenset(files)

    def _candidates(self, name: str) -> Iterable[tuple[Path, bool]]:
        parts = name.split(".")
        for root in self.roots:
            base = root.joinpath(*parts)
            yield base.with_name(base.name + ".py"), False
            yield base / "__init__.py", True

    def _imports_at(self, path: Path, name: str, package: bool) -> frozenset[str] | None:
        key = (path, name)
        if key in self._imports:
            return self._imports[key]
        source = self._read(path)
        imported: frozenset[str] | None
        if source is None:
            imported = None
        else:
            try:
                imported = imports_of(source, name, package=package)
                self._last_good[key] = imported
            except (SyntaxError, ValueError) as exc:
                self.broken[path] = _describe_syntax_error(self.shown(path), exc)
                imported = self._last_good.get(key, frozenset())
        self._imports[key] = imported
        return imported


def _describe_syntax_error(shown: str, exc: SyntaxError | ValueError) -> str:
    if isinstance(exc, SyntaxError):
        where = f"{shown}:{exc.lineno}" if exc.lineno else shown
        return f"{where}: {exc.msg}"
    return f"{shown}: {exc}"  # e.g. a null byte in the source


# ------------------------------------------------------------------------- which services


def services_to_reload(
    changed: Iterable[Path], sources: Mapping[str, frozenset[Path]]
) -> tuple[list[str], list[Path]]:
    """The services (in the order of ``sources``, a service's files) whose files hold a
    changed one; and the changed files that no service's files hold. The caller reloads
    every service when that second list is not empty.

    >>> sources = {"pricing": frozenset({Path("p.py"), Path("h.py")}),
    ...            "billing": frozenset({Path("b.py"), Path("h.py")})}
    >>> services_to_reload([Path("p.py")], sources)
    (['pricing'], [])
    >>> services_to_reload([Path("h.py")], sources)
    (['pricing', 'billing'], [])
    >>> services_to_reload([Path("t.py")], sources)[1] == [Path("t.py")]
    True
    """
    files = set(changed)
    due = [name for name, held in sources.items() if files & held]
    claimed = set().union(*sources.values()) if sources else set()
    return due, sorted(files - claimed)


class Burst:
    """Changes close together, taken as one: due :attr:`quiet` seconds after the last
    change, or :attr:`longest` seconds after the first one when changes keep coming. The
    caller passes the time in (``time.monotonic()``).

    >>> burst = Burst(quiet=0.3)
    >>> burst.changed(["a.py"], now=10.0)
    >>> burst.changed(["b.py"], now=10.2)
    >>> burst.due_at
    10.5
    >>> burst.take(now=10.4) is None
    True
    >>> sorted(burst.take(now=10.5)), burst.due_at
    (['a.py', 'b.py'], None)
    """

    __slots__ = ("_first", "_last", "_paths", "longest", "quiet")

    def __init__(self, quiet: float = QUIET, longest: float = LONGEST) -> None:
        self.quiet = quiet
        self.longest = longest
        self._paths: set[str] = set()
        self._first = 0.0
        self._last = 0.0

    def changed(self, paths: Iterable[str | os.PathLike[str]], now: float) -> None:
        new = {os.fspath(p) for p in paths}
        if not new:
            return
        if not self._paths:
            self._first = now
        self._paths |= new
        self._last = now

    @property
    def due_at(self) -> float | None:
        """When the burst is over; None when nothing changed."""
        if not self._paths:
            return None
        return min(self._last + self.quiet, self._first + self.longest)

    def take(self, now: float) -> frozenset[str] | None:
        """The paths of the burst if it is over at ``now`` (and a new burst begins), else
        None."""
        due = self.due_at
        if due is None or now < due:
            return None
        paths = frozenset(self._paths)
        self._paths.clear()
        return paths


# ------------------------------------------------------------------------- the watcher


class ReloadHost(Protocol):
    """What a :class:`Reloader` uses of the supervisor."""

    @property
    def echo(self) -> Callable[[str], None]: ...

    def replace(self, service: str) -> Awaitable[str | None]:
        """Replace the nodes of ``service`` one at a time; None once done, else why not."""
        ...


class Reloader:
    """Watches the sources of ``services`` (service name -> target module) and has
    ``host`` replace the nodes of the services a change concerns (see the module
    docstring)."""

    def __init__(
        self,
        host: ReloadHost,
        services: Mapping[str, str],
        *,
        roots: Sequence[Path],
        skip: Sequence[Path] = (),
        root: Path | None = None,
        config_file: Path | None = None,
        quiet: float = QUIET,
    ) -> None:
        self.host = host
        self.services = dict(services)
        #: the folders modules are imported from: the python path, then the services' own
        self.roots = _unique([*roots, *_package_roots(services.values(), roots)])
        #: the folders watched: the roots that exist, but none inside another
        self.watched = [
            r
            for r in self.roots
            if r.is_dir() and not any(r != o and r.is_relative_to(o) for o in self.roots)
        ]
        self.skip = tuple(skip)
        self.root = root
        self.config_file = config_file
        self.quiet = quiet
        #: services whose last reload failed or was held back: due at the next change
        self.pending: set[str] = set()
        self.tree = SourceTree(self.roots)
        self.tree.shown = self.shown

    def shown(self, path: Path) -> str:
        """``path`` for people: relative to the mesh folder when it is inside."""
        if self.root is not None and path.is_relative_to(self.root):
            return str(path.relative_to(self.root))
        return str(path)

    def counts(self, change: Change, path: str) -> bool:
        """The watch filter: a service's source, or the configuration file."""
        file = Path(path)
        return file == self.config_file or is_source(file, self.roots, self.skip)

    def sources(self) -> dict[str, frozenset[Path]]:
        return {name: self.tree.files_of(module) for name, module in self.services.items()}

    async def run(self) -> None:
        """Watch and reload until cancelled."""
        from watchfiles import awatch

        sources = self.sources()
        burst = Burst(self.quiet)
        arrived = asyncio.Event()
        stop = asyncio.Event()

        async def watch() -> None:
            try:
                async for changes in awatch(
                    *self.watched, watch_filter=self.counts, stop_event=stop
                ):
                    burst.changed((path for _, path in changes), time.monotonic())
                    arrived.set()
            except Exception as exc:  # inotify's limits, a folder that went
                self.host.echo(f"reload: watching the source stopped: {exc}")

        if not self.watched:
            self.host.echo("reload: none of the folders of mesh.python_path exists: not watching")
            return
        folders = ", ".join(self.shown(r) or "." for r in self.watched)
        self.host.echo(f"reload: watching the .py files under {folders}")
        watcher = asyncio.create_task(watch())
        try:
            while True:
                now = time.monotonic()
                paths = burst.take(now)
                if paths is None:
                    due = burst.due_at
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            arrived.wait(), None if due is None else max(0.0, due - now)
                        )
                    arrived.clear()
                    continue
                sources = await self.reload({Path(p) for p in paths}, sources)
        finally:
            stop.set()  # the watching thread sees it within its step (50 ms)
            await asyncio.wait([watcher], timeout=2.0)
            watcher.cancel()

    async def reload(
        self, changed: set[Path], before: dict[str, frozenset[Path]]
    ) -> dict[str, frozenset[Path]]:
        """Reload what ``changed`` concerns, given the services' files ``before`` it;
        returns their files now."""
        if self.config_file is not None and self.config_file in changed:
            self.host.echo(
                f"reload: {self.shown(self.config_file)} changed: a reload replaces code, "
                "not configuration; restart 'wiremesh run' to apply it"
            )
            changed.discard(self.config_file)
        if not changed:
            return before
        self.tree.forget(changed)
        after = self.sources()
        either = {name: before.get(name, frozenset()) | held for name, held in after.items()}
        due, unclaimed = services_to_reload(changed, either)
        if unclaimed:
            due = list(self.services)
        due = [name for name in self.services if name in due or name in self.pending]
        if not due:
            return after
        broken = sorted(
            message
            for path, message in self.tree.broken.items()
            if any(path in after[name] for name in due)
        )
        names = ", ".join(sorted(self.shown(p) for p in changed))
        if broken:
            self.pending.update(due)
            for message in broken:
                self.host.echo(
                    f"reload: {message}; not reloading {', '.join(due)}: the nodes running "
                    "go on (save a fix to reload)"
                )
            return after
        _forget_bytecode(changed)
        self.host.echo(f"reload: {names} changed: reloading {', '.join(due)}")
        for name in due:
            why = await self.host.replace(name)
            if why is None:
                self.pending.discard(name)
            else:
                self.pending.add(name)
                self.host.echo(
                    f"reload of {name} failed ({names} changed): {why} (save a fix to try again)"
                )
        return after


def _forget_bytecode(paths: Iterable[Path]) -> None:
    """Remove the cached byte code of ``paths``: Python trusts a ``.pyc`` whose source has
    the same size and the same mtime in whole seconds, which two quick saves can have."""
    for path in paths:
        with contextlib.suppress(OSError, ValueError, NotImplementedError):
            Path(importlib.util.cache_from_source(str(path))).unlink()


def _package_roots(modules: Iterable[str], roots: Sequence[Path]) -> list[Path]:
    """The folders the services' modules were imported from (the supervisor imported
    them) that are none of ``roots`` and hold no installed package: an editable install."""
    found = []
    for module in modules:
        loaded = sys.modules.get(module)
        file = getattr(loaded, "__file__", None)
        if not file:
            continue
        path = Path(os.path.abspath(file))
        depth = module.count(".") + (1 if path.name == "__init__.py" else 0)
        folder = path.parents[depth]
        if folder in roots or {"site-packages", "dist-packages"} & set(folder.parts):
            continue
        found.append(folder)
    return found


def _unique(paths: Iterable[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))
