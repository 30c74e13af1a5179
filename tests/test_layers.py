"""The layered layout of ARCHITECTURE.md (the design notes: rings and nevers), enforced on the
source text: pure AST, nldist itself is never imported.

Every ``*.py`` file under ``nldist/`` is parsed and its import graph built from the WHOLE tree:
imports inside functions, methods, classes and ``if TYPE_CHECKING:`` blocks count, relative
imports are resolved, ``from nldist.scores import linalg`` is an edge to ``nldist.scores.linalg``
when that is a module (else to ``nldist.scores``), and ``importlib.import_module("nldist.x")``
with a literal name counts as an import, as does a ``"nldist.x:name"`` registry string (a
factory loaded by name on first use: ``nldist.models.FACTORIES``). Edges to third-party modules
are kept for the nevers, and ``.compute()`` / ``.persist()`` method calls for the graph never.
The implicit import of parent packages (``import nldist.a.b`` first runs ``nldist/__init__``)
is not an edge: it would put every module in one cycle with the public ``nldist``.

Rules (one test each; every failure lists each offence as ``file:line: import``):

* every module has a ring in ``RINGS`` and imports only its own ring or lower rings;
* no import cycle among nldist modules;
* the nevers of ARCHITECTURE.md (compute never does I/O or Dask, store never computes, only
  ``graph`` builds Dask graphs or calls ``.compute()`` / ``.persist()``, only ``store`` and the
  ingest import zarr, fsspec or pyarrow, no function-local nldist import, no ``_private`` name
  of another module, ``cli`` goes through the front doors only);
* the README's ``## Layout`` section lists every module, and only files that exist.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "nldist"
README = ROOT / "README.md"

# ---------------------------------------------------------------------------------------------
# The ring table (ARCHITECTURE.md, "Rings"). Keyed by module prefix: a key covers the module
# of that name and every submodule of it; the longest matching key wins. A module imports
# only modules of its own rank or lower. "public" (the package __init__ and nldist.api) sits
# between the orchestration (4) and the shells (5): it may import anything below ring 5, the
# shells may import it, nothing below ring 5 may.
# ---------------------------------------------------------------------------------------------
PUBLIC = 4.5
EXAMPLES = 6  # shipped example torch modules, loaded by spec string: nothing may import them

RINGS: dict[str, float] = {
    # ring 0: leaves
    "nldist.errors": 0,
    "nldist._checks": 0,
    "nldist._budget": 0,
    "nldist._runtime": 0,
    "nldist._version": 0,
    "nldist.events": 0,  # the one progress event type
    "nldist.example_jobs": 0,  # the shipped example job files (nldist example)
    # option constraints declared once (pydantic), shared by the job schema, the API and
    # the models' quadrature settings: a leaf
    "nldist.options": 0,
    # ring 1: models
    "nldist.models": 1,
    # ring 2: math
    "nldist.scores": 2,
    "nldist.train": 2,
    "nldist.objectives": 2,  # what train minimises: the oracles and the full-data blocks
    "nldist.precond": 2,
    # the ingest plan's kernels (pure pandas/NumPy: statistics, plan, encoding of a partition)
    "nldist.ingest.plan": 2,
    # ring 3: wiring + I/O (of results, and of sources: packaged datasets and files)
    "nldist.graph": 3,
    "nldist.store": 3,
    "nldist.ingest": 3,
    "nldist.datasets": 3,
    # ring 4: orchestration
    "nldist.pipeline": 4,
    # public front door
    "nldist": PUBLIC,  # exactly the package __init__ (see ring_of)
    "nldist.api": PUBLIC,
    # ring 5: shells
    # the command line, a package: its verbs (data, runs), what the console shows (tables,
    # progress), the Typer app (shell), one-line errors (oneline), the deferred front
    # doors (fronts)
    "nldist.cli": 5,
    "nldist.jobs": 5,
    "nldist.report": 5,
    "nldist.cluster": 5,
    "nldist.__main__": 5,
    # not part of the library's layers
    "nldist.examples": EXAMPLES,
}

RING_NAMES = {0: "ring 0", 1: "ring 1", 2: "ring 2", 3: "ring 3", 4: "ring 4",
              PUBLIC: "public", 5: "ring 5", EXAMPLES: "examples"}


def ring_of(module: str) -> float | None:
    """Rank of a module from RINGS (longest prefix; the key "nldist" matches only itself)."""
    best = None
    for key, rank in RINGS.items():
        if key == "nldist":
            if module == "nldist":
                return rank
            continue
        if (module == key or module.startswith(key + ".")) and (
                best is None or len(key) > len(best[0])):
            best = (key, rank)
    return None if best is None else best[1]


def under(name: str, prefix: str) -> bool:
    """``name`` is ``prefix`` or a submodule of it (dotted components, not characters)."""
    return name == prefix or name.startswith(prefix + ".")


def under_any(name: str, prefixes) -> bool:
    return any(under(name, p) for p in prefixes)


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# ---------------------------------------------------------------------------------------------
# Scanning
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    path: str  # its file, relative to the repository root
    line: int
    target: str  # resolved dotted name: an nldist module, or a third-party module
    names: tuple[str, ...]  # the names of a from-import that resolved to this target
    text: str  # the import as written (one line)
    local: bool  # inside a def, lambda or class body, at any depth
    exact: bool  # third-party, or an nldist module that exists (False: a broken import)
    submodule: bool = False  # ``from X import a`` where X.a is a module (target is X.a)

    @property
    def internal(self) -> bool:
        return under(self.target, "nldist")

    def where(self) -> str:
        local = "  [function-local]" if self.local else ""
        return f"{self.path}:{self.line}: {self.text}{local}"


@dataclass(frozen=True)
class Use:
    """An attribute access ``<alias>.<attr>`` resolved through the module's import aliases."""

    module: str
    path: str
    line: int
    dotted: str  # e.g. "nldist.scores.linalg._helper" or "dask.delayed"
    base: str  # the object the attribute is taken from, e.g. "nldist.scores.linalg"
    attr: str
    root: str  # what the leftmost name is bound to, e.g. "dask" for ``import dask``


def module_files(pkg: Path = PKG) -> dict[str, Path]:
    """Module name -> file, for every ``*.py`` under the package directory."""
    out = {}
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg.parent)
        if "__pycache__" in rel.parts:
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.setdefault(".".join(parts), path)
    return out


#: a registry string naming a module and a name in it, loaded on first use
REGISTRY_RE = re.compile(r"^(nldist(?:\.[A-Za-z_][A-Za-z_0-9]*)+):([A-Za-z_][A-Za-z_0-9]*)$")
#: method calls that run a Dask graph (on any object: an array, a bag, a client)
RUN_METHODS = ("compute", "persist")


@dataclass(frozen=True)
class MethodCall:
    """A call ``<expr>.<name>(...)`` of one of :data:`RUN_METHODS`."""

    module: str
    path: str
    line: int
    text: str  # the call as written (its first line)


class _Scanner(ast.NodeVisitor):
    def __init__(self, module: str, is_pkg: bool, path: str, modules: set[str],
                 source: str = ""):
        self.module, self.is_pkg, self.path, self.modules = module, is_pkg, path, modules
        self.source = source
        self.depth = 0
        self.imports: list[Import] = []
        self.aliases: dict[str, str] = {}
        self.attributes: list[tuple[int, ast.Attribute]] = []
        self.runs: list[MethodCall] = []

    # scopes -------------------------------------------------------------------------------
    def _scoped(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _scoped

    # imports ------------------------------------------------------------------------------
    def _add(self, node, target, names, text, exact=True, submodule=False):
        self.imports.append(Import(self.module, self.path, node.lineno, target, tuple(names),
                                   text, self.depth > 0, exact, submodule))

    def visit_Import(self, node: ast.Import):
        for a in node.names:
            exact = not under(a.name, "nldist") or a.name in self.modules
            text = f"import {a.name}" + (f" as {a.asname}" if a.asname else "")
            self._add(node, a.name, (), text, exact)
            if a.asname:
                self.aliases[a.asname] = a.name
            else:
                top = a.name.split(".")[0]
                self.aliases[top] = top
        self.generic_visit(node)

    def _base(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = self.module.split(".")
        if not self.is_pkg:
            parts = parts[:-1]
        if node.level > 1:
            parts = parts[: len(parts) - (node.level - 1)]
        return ".".join([*parts, *([node.module] if node.module else [])])

    def visit_ImportFrom(self, node: ast.ImportFrom):
        base = self._base(node)
        written = "." * node.level + (node.module or "")
        groups: dict[str, list[str]] = {}
        for a in node.names:
            sub = f"{base}.{a.name}"
            target = sub if (under(base, "nldist") and sub in self.modules) else base
            groups.setdefault(target, []).append(a.name)
            if a.name != "*":
                self.aliases[a.asname or a.name] = sub
        for target, names in groups.items():
            exact = not under(target, "nldist") or target in self.modules
            self._add(node, target, names, f"from {written} import {', '.join(names)}", exact,
                      submodule=target != base)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call):
        # importlib.import_module("nldist.x") / __import__("nldist.x") with a literal name
        func = node.func
        name = (func.attr if isinstance(func, ast.Attribute)
                else func.id if isinstance(func, ast.Name) else None)
        if (name in ("import_module", "__import__") and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                and under(node.args[0].value, "nldist")):
            target = node.args[0].value
            self._add(node, target, (), f"{name}({target!r})", target in self.modules)
        if isinstance(func, ast.Attribute) and func.attr in RUN_METHODS:
            text = (ast.get_source_segment(self.source, node) or f".{func.attr}(...)")
            self.runs.append(MethodCall(self.module, self.path, node.lineno,
                                        text.splitlines()[0]))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant):
        # "nldist.models.torchmodel:torch_spec": an import the statements never show
        if isinstance(node.value, str) and (match := REGISTRY_RE.match(node.value)):
            target, name = match[1], match[2]
            self._add(node, target, (name,), f"{node.value!r}  [registry string]",
                      target in self.modules)

    def visit_Attribute(self, node: ast.Attribute):
        self.attributes.append((node.lineno, node))
        self.generic_visit(node)

    # attribute uses, resolved through aliases (after the whole module is seen) --------------
    def dotted(self, node) -> tuple[str, str] | None:
        """(dotted name, what its leftmost name is bound to), or None if not an import."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.aliases:
            root = self.aliases[node.id]
            return ".".join([root, *reversed(parts)]), root
        return None

    def uses(self) -> list[Use]:
        out = []
        for line, node in self.attributes:
            base = self.dotted(node.value)
            if base is not None:
                out.append(Use(self.module, self.path, line, f"{base[0]}.{node.attr}", base[0],
                               node.attr, base[1]))
        return out


def bound_names(source: str) -> set[str] | None:
    """Names a module binds at import time (top level, through if/try/with blocks), or None
    when it may bind anything (``from x import *`` or a module ``__getattr__``)."""
    names: set[str] = set()

    def target_names(node):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for elt in node.elts:
                target_names(elt)
        elif isinstance(node, ast.Starred):
            target_names(node.value)

    def walk(body) -> bool:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
                if node.name == "__getattr__":
                    return False
            elif isinstance(node, ast.Import):
                names.update(a.asname or a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if any(a.name == "*" for a in node.names):
                    return False
                names.update(a.asname or a.name for a in node.names)
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    target_names(t)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                target_names(node.target)
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                target_names(node.target)
            if isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        target_names(item.optional_vars)
            for field in ("body", "orelse", "finalbody"):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    if not walk(getattr(node, field, [])):
                        return False
            for handler in getattr(node, "handlers", []):
                if handler.name:
                    names.add(handler.name)
                if not walk(handler.body):
                    return False
        return True

    return names if walk(ast.parse(source).body) else None


def scan_source(source: str, module: str, is_pkg: bool, path: str,
                modules: set[str]) -> tuple[list[Import], list[Use]]:
    return scan_all(source, module, is_pkg, path, modules)[:2]


def scan_all(source: str, module: str, is_pkg: bool, path: str, modules: set[str]
             ) -> tuple[list[Import], list[Use], list[MethodCall]]:
    scanner = _Scanner(module, is_pkg, path, modules, source)
    scanner.visit(ast.parse(source, filename=path))
    return scanner.imports, scanner.uses(), scanner.runs


@dataclass(frozen=True)
class Tree:
    files: dict[str, Path]
    imports: tuple[Import, ...]
    uses: tuple[Use, ...]
    bound: dict[str, set[str] | None]  # module -> names it binds (None: any)
    runs: tuple[MethodCall, ...] = ()  # .compute() / .persist() calls

    def missing_names(self, imp: Import) -> list[str]:
        """Names of ``from <nldist module> import a, b`` that the module does not bind."""
        bound = self.bound.get(imp.target, set())
        if bound is None or imp.submodule:
            return []
        return [n for n in imp.names if n != "*" and n not in bound]

    def resolves(self, imp: Import) -> bool:
        """An nldist import whose module exists and which finds at least one of its names
        (``from nldist import moved_away`` is a broken import, not an edge to the package;
        test_nldist_imports_resolve reports it)."""
        if not imp.internal or not imp.exact or imp.target not in self.files:
            return False
        return not imp.names or len(self.missing_names(imp)) < len(imp.names)

    def edges(self) -> dict[str, dict[str, Import]]:
        """nldist module -> nldist module it imports -> the first such import statement."""
        graph: dict[str, dict[str, Import]] = {m: {} for m in self.files}
        for imp in sorted(self.imports, key=lambda i: (i.module, i.line)):
            if self.resolves(imp):
                graph[imp.module].setdefault(imp.target, imp)
        return graph


@functools.lru_cache(maxsize=1)
def tree() -> Tree:
    files = module_files()
    modules = set(files)
    imports, uses, runs, bound = [], [], [], {}
    for module, path in files.items():
        rel = path.relative_to(ROOT).as_posix()
        source = path.read_text(encoding="utf-8")
        i, u, r = scan_all(source, module, path.name == "__init__.py", rel, modules)
        imports += i
        uses += u
        runs += r
        bound[module] = bound_names(source)
    return Tree(files, tuple(imports), tuple(uses), bound, tuple(runs))


def _natural(line: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", line)]


def fail_if(title: str, lines) -> None:
    """Fail with one line per offence (sorted by file and line), no traceback noise."""
    lines = sorted(set(lines), key=_natural)
    if lines:
        pytest.fail(f"{title} ({len(lines)}):\n  " + "\n  ".join(lines), pytrace=False)


# ---------------------------------------------------------------------------------------------
# Graph algorithms (no networkx)
# ---------------------------------------------------------------------------------------------
def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's SCCs, each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []

    def visit(v: str):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(sccs)


def simple_cycles(graph: dict[str, dict[str, Import]], comp: list[str],
                  limit: int = 400) -> list[list[str]]:
    """Elementary cycles inside one SCC, each rotated to start at its smallest node, shortest
    first (at most ``limit`` enumerated)."""
    order = {v: k for k, v in enumerate(comp)}
    found: list[list[str]] = []

    def dfs(start: str, path: list[str], on_path: set[str]):
        for w in sorted(graph[path[-1]]):
            if len(found) >= limit:
                return
            if w == start:
                found.append(list(path))
            elif w in order and order[w] > order[start] and w not in on_path:
                path.append(w)
                on_path.add(w)
                dfs(start, path, on_path)
                on_path.discard(w)
                path.pop()

    for start in comp:
        if len(found) < limit:
            dfs(start, [start], {start})
    return sorted(found, key=lambda c: (len(c), c))


def short(module: str) -> str:
    return module.removeprefix("nldist.") if module != "nldist" else "nldist"


def describe_cycle(graph: dict[str, dict[str, Import]], cycle: list[str]) -> str:
    hops = []
    for a, b in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
        imp = graph[a][b]
        hops.append(f"{short(a)} -> {short(b)} ({imp.path}:{imp.line}"
                    + (", function-local" if imp.local else "") + ")")
    names = " -> ".join(short(m) for m in [*cycle, cycle[0]])
    return f"{names}:  " + "; ".join(hops)


# ---------------------------------------------------------------------------------------------
# The scanner itself (so that a silent regression in it cannot make the rules pass)
# ---------------------------------------------------------------------------------------------
def test_scanner_sees_every_kind_of_import():
    src = (
        "from typing import TYPE_CHECKING\n"
        "import dask\n"
        "import nldist.errors as E\n"
        "from . import linalg, helper\n"
        "from ..models import base as mb\n"
        "if TYPE_CHECKING:\n"
        "    from nldist.store.records import Record\n"
        "def f():\n"
        "    class C:\n"
        "        def g(self):\n"
        "            from nldist.graph import pass1\n"
        "            import importlib\n"
        "            return importlib.import_module('nldist.pipeline')\n"
        "    return dask.delayed(f), linalg._helper, E._x, mb.Model\n"
        "REGISTRY = {'t': 'nldist.models.torchmodel:torch_spec', 'x': 'not nldist.a:b'}\n"
        "def h(arr, client):\n"
        "    return arr.sum().compute(), client.persist(arr), compute(arr)\n"
    )
    modules = {"nldist", "nldist.errors", "nldist.scores", "nldist.scores.linalg",
               "nldist.models", "nldist.models.base", "nldist.store.records", "nldist.graph",
               "nldist.pipeline", "nldist.scores.block", "nldist.models.torchmodel"}
    imports, uses, runs = scan_all(src, "nldist.scores.block", False, "x.py", modules)
    got = {(i.target, i.names, i.local) for i in imports}
    # a registry string is an import of its module's name; other strings are not
    assert ("nldist.models.torchmodel", ("torch_spec",), False) in got
    assert not any(i.target == "nldist.a" for i in imports)
    assert [r.text for r in runs] == ["arr.sum().compute()", "client.persist(arr)"]
    assert ("dask", (), False) in got
    assert ("nldist.errors", (), False) in got
    assert ("nldist.scores.linalg", ("linalg",), False) in got
    assert ("nldist.scores", ("helper",), False) in got  # not a module: edge to the package
    assert ("nldist.models.base", ("base",), False) in got
    assert ("nldist.store.records", ("Record",), False) in got  # TYPE_CHECKING counts
    assert ("nldist.graph", ("pass1",), True) in got  # method of a class in a def
    assert ("nldist.pipeline", (), True) in got  # import_module with a literal
    dotted = {(u.dotted, u.root) for u in uses}
    assert ("dask.delayed", "dask") in dotted
    assert ("nldist.scores.linalg._helper", "nldist.scores.linalg") in dotted
    assert ("nldist.errors._x", "nldist.errors") in dotted
    dotted = {u.dotted for u in uses}
    assert "nldist.models.base.Model" in dotted
    bound = bound_names("import a.b\nfrom c import d as e\nx, (y, *z) = 1, (2, 3)\n"
                        "if 1:\n    def f(): pass\nelse:\n    class K: pass\n"
                        "try:\n    import g\nexcept ImportError as err:\n    g = None\n")
    assert bound == {"a", "e", "x", "y", "z", "f", "K", "g", "err"}
    assert bound_names("from m import *\n") is None
    assert tree().files, f"no modules found under {PKG}"


def test_cycle_finder_reports_every_elementary_cycle():
    """The four cycles of the old flat layout, as a synthetic graph."""
    pairs = [("kernels", "dualstore"), ("dualstore", "resume"), ("resume", "kernels"),
             ("kernels", "sketch"), ("sketch", "kernels"), ("models", "nets"),
             ("nets", "models"), ("nets", "losses"), ("losses", "models"), ("api", "kernels"),
             ("self", "self")]
    graph: dict[str, dict[str, Import]] = {}
    for a, b in pairs:
        graph.setdefault(a, {})[b] = Import(a, f"{a}.py", 1, b, (), f"import {b}", False, True)
        graph.setdefault(b, {})
    sccs = [c for c in strongly_connected(graph) if len(c) > 1 or c[0] in graph[c[0]]]
    assert sccs == [["dualstore", "kernels", "resume", "sketch"], ["losses", "models", "nets"],
                    ["self"]]
    cycles = [c for comp in sccs for c in simple_cycles(graph, comp)]
    assert cycles == [["kernels", "sketch"], ["dualstore", "resume", "kernels"],
                      ["models", "nets"], ["losses", "models", "nets"], ["self"]]
    assert describe_cycle(graph, ["models", "nets"]).startswith("models -> nets -> models:")


# ---------------------------------------------------------------------------------------------
# Modules, packages, rings
# ---------------------------------------------------------------------------------------------
def test_packages_are_regular_and_unshadowed():
    """A directory of modules needs an __init__.py, and must not sit beside a same-named
    module (``models.py`` next to ``models/`` makes ``nldist.models.base`` unimportable)."""
    bad = []
    for d in sorted(p for p in PKG.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        if not any(d.glob("*.py")):
            continue
        rel = d.relative_to(ROOT).as_posix()
        if not (d / "__init__.py").exists():
            bad.append(f"{rel}/ has modules but no __init__.py (namespace package)")
        twin = d.with_suffix(".py")
        if twin.exists():
            bad.append(f"{twin.relative_to(ROOT).as_posix()} shadows or is shadowed by {rel}/"
                       " (one module name, two files): move its contents into the package")
    fail_if("package layout problems", bad)


def test_every_module_has_a_ring():
    missing = [f"{m} ({p.relative_to(ROOT).as_posix()}): add it to RINGS in tests/test_layers.py"
               " (and to ARCHITECTURE.md), or move it into a package that has a ring"
               for m, p in tree().files.items() if ring_of(m) is None]
    fail_if("modules not covered by the ring table", missing)


def test_nldist_imports_resolve():
    """Every nldist import names a module that exists, and every name of ``from nldist.x
    import n`` is a submodule of nldist.x or a name nldist.x binds (catches half-done moves)."""
    t = tree()
    bad = []
    for imp in t.imports:
        if not imp.internal:
            continue
        if not imp.exact or imp.target not in t.files:
            bad.append(f"{imp.where()}  -> no module {imp.target}")
        elif missing := t.missing_names(imp):
            bad.append(f"{imp.where()}  -> {imp.target} has no submodule or name "
                       f"{', '.join(missing)}")
    fail_if("imports of nldist modules that do not exist", bad)


def test_imports_point_down_the_rings():
    """A module imports only modules of its own ring or lower rings."""
    bad = []
    t = tree()
    for imp in t.imports:
        if not t.resolves(imp):
            continue  # broken imports: reported by test_nldist_imports_resolve
        src, dst = ring_of(imp.module), ring_of(imp.target)
        if src is None or dst is None:
            continue  # reported by test_every_module_has_a_ring
        if dst > src:
            bad.append(f"{imp.where()}  ({short(imp.module)}: {RING_NAMES[src]} imports "
                       f"{short(imp.target)}: {RING_NAMES[dst]})")
    fail_if("imports that point up the rings", bad)


def test_no_import_cycles():
    graph = tree().edges()
    lines = []
    for comp in strongly_connected(graph):
        if len(comp) == 1 and comp[0] not in graph[comp[0]]:
            continue
        cycles = simple_cycles(graph, comp)
        lines.append(f"cycle group of {len(comp)} module(s): {', '.join(map(short, comp))}"
                     f" ({len(cycles)}{'+' if len(cycles) >= 400 else ''} elementary cycles)")
        lines += [f"    {describe_cycle(graph, c)}" for c in cycles[:60]]
        if len(cycles) > 60:
            lines.append(f"    ... and {len(cycles) - 60} more")
    if lines:
        pytest.fail("import cycles among nldist modules:\n  " + "\n  ".join(lines), pytrace=False)


# ---------------------------------------------------------------------------------------------
# The nevers
# ---------------------------------------------------------------------------------------------
COMPUTE = ("nldist.models", "nldist.scores", "nldist.train", "nldist.objectives")
STORE = ("nldist.store",)
GRAPH = ("nldist.graph",)
DASK_GRAPH_MODULES = ("dask.array", "dask.dataframe", "dask.bag", "dask.delayed")
DASK_GRAPH_NAMES = {"delayed", "compute", "persist", "array", "dataframe", "bag"}
CLI = ("nldist.cli",)
CLI_MAY_IMPORT = ("nldist.pipeline", "nldist.jobs", "nldist.report", "nldist.cluster",
                  "nldist.errors", "nldist.events", "nldist.datasets", "nldist.ingest",
                  "nldist.api", "nldist.example_jobs")


def _forbidden(importers, targets) -> list[str]:
    return [imp.where() for imp in tree().imports
            if under_any(imp.module, importers) and under_any(imp.target, targets)]


def test_never_compute_imports_io_or_dask():
    """models/, scores/, train never import dask, distributed, zarr, store, graph, pipeline."""
    bad = _forbidden(COMPUTE, ("dask", "distributed", "zarr", "nldist.store", "nldist.graph",
                               "nldist.pipeline"))
    fail_if("models/scores/train import I/O or Dask (arrays in, arrays out)", bad)


def test_never_store_imports_compute():
    """store/ never imports compute modules (models, scores, train), graph, pipeline, torch,
    dask."""
    bad = _forbidden(STORE, ("nldist.models", "nldist.scores", "nldist.train",
                             "nldist.objectives", "nldist.graph",
                             "nldist.pipeline", "torch", "dask"))
    fail_if("store/ imports compute or wiring modules", bad)


def test_only_graph_builds_dask_graphs():
    """Only nldist.graph imports dask.array/dataframe/bag/delayed, imports delayed, compute,
    persist, array from dask, or calls dask.delayed/compute/persist. Others may ``import dask``
    for dask.config only; nldist.cluster makes clients (distributed)."""
    bad = []
    for imp in tree().imports:
        if under_any(imp.module, GRAPH) or not under(imp.target, "dask"):
            continue
        if under_any(imp.target, DASK_GRAPH_MODULES) or DASK_GRAPH_NAMES & set(imp.names):
            bad.append(imp.where())
    seen = set()
    for use in tree().uses:
        # ``import dask`` then ``dask.delayed(...)``; uses through ``da = dask.array`` aliases
        # are already reported at their import
        if under_any(use.module, GRAPH) or use.root != "dask":
            continue
        parts = use.dotted.split(".")
        if len(parts) >= 2 and parts[1] in DASK_GRAPH_NAMES:
            key = (use.path, use.line, ".".join(parts[:2]))
            if key not in seen:
                seen.add(key)
                bad.append(f"{use.path}:{use.line}: uses {'.'.join(parts[:2])}")
    fail_if("Dask graphs built outside nldist.graph", bad)


IO_LIBS = ("zarr", "fsspec", "pyarrow")
#: modules that read and write files: the store, and the ingest of source tables
IO_MODULES = ("nldist.store", "nldist.ingest")
#: the exceptions, each with its reason
IO_EXCEPTIONS = {
    # a torch: model's .py file by path or URL (s3://...), read on the driver and on every
    # worker when the model is built: the models ring cannot reach the store
    ("nldist.models.torchspec", "fsspec"): "torch: specs load a module file by URL",
}


def test_only_store_and_ingest_import_io_libraries():
    """zarr, fsspec and pyarrow are imported only under nldist.store and by the ingest
    (plus the listed exceptions): everything else reads and writes through them."""
    bad = [imp.where() for imp in tree().imports
           if under_any(imp.target, IO_LIBS) and not under_any(imp.module, IO_MODULES)
           and (imp.module, imp.target.split(".")[0]) not in IO_EXCEPTIONS]
    fail_if("zarr/fsspec/pyarrow imported outside store/ and the ingest (go through "
            "nldist.store)", bad)


def test_only_graph_runs_dask_graphs():
    """``.compute()`` and ``.persist()`` are called only in nldist.graph: a pass elsewhere
    would run outside its chunk progress, counting and cluster handling."""
    bad = [f"{r.path}:{r.line}: {r.text}" for r in tree().runs
           if not under_any(r.module, GRAPH)]
    fail_if(".compute()/.persist() outside nldist.graph (add a function there)", bad)


def test_registry_strings_resolve():
    """Every ``"nldist.x:name"`` registry string names a module that exists and a name it
    binds (they are imports: the ring and cycle rules above count them too)."""
    t = tree()
    regs = [i for i in t.imports if i.text.endswith("[registry string]")]
    assert regs, "no registry strings found: nldist.models.FACTORIES names its torch factories"
    bad = [f"{i.where()}  -> " + (f"no module {i.target}" if i.target not in t.files
                                  else f"{i.target} binds no {i.names[0]}")
           for i in regs if i.target not in t.files or t.missing_names(i)]
    fail_if("registry strings that do not resolve", bad)


def test_no_function_local_nldist_imports():
    """No import of an nldist module inside a def/class body, at any depth (they hide cycles);
    optional third-party imports may stay deferred."""
    bad = [i.where() for i in tree().imports if i.internal and i.local]
    fail_if("function-local imports of nldist modules (move them to the top; "
                           "if that makes a cycle, the layering is wrong)", bad)


def test_no_private_names_across_modules():
    """No ``from nldist.x import _name`` of another module's private name, and no
    ``<nldist module>._name`` attribute access on another module."""
    t = tree()
    bad = []
    for imp in t.imports:
        if not imp.internal or imp.target == imp.module:
            continue
        for name in imp.names:
            if is_private(name) and f"{imp.target}.{name}" not in t.files:
                bad.append(f"{imp.where()}  (private name {name} of {imp.target})")
    for use in t.uses:
        if (is_private(use.attr) and use.base in t.files and use.base != use.module
                and use.dotted not in t.files):
            bad.append(f"{use.path}:{use.line}: {use.dotted}  (private name {use.attr} of "
                       f"{use.base})")
    fail_if("private names used across modules", bad)


def test_cli_imports_only_front_doors():
    """cli parses, calls, subscribes, prints: it imports nldist only through pipeline, jobs,
    report, cluster, errors, events, datasets, ingest, example_jobs and the public package
    (never scores, graph, store, models or other internals)."""
    bad = []
    for imp in tree().imports:
        if (under_any(imp.module, CLI) and imp.internal and imp.target != "nldist"
                and not under_any(imp.target, CLI_MAY_IMPORT + CLI)):
            bad.append(imp.where())
    fail_if("cli reaches past the front doors", bad)


# ---------------------------------------------------------------------------------------------
# README
# ---------------------------------------------------------------------------------------------
def _layout_section(text: str) -> str | None:
    lines = text.splitlines()
    starts = [k for k, line in enumerate(lines) if re.fullmatch(r"##\s+Layout\s*", line)]
    if not starts:
        return None
    if len(starts) > 1:
        pytest.fail(f"README.md has {len(starts)} '## Layout' sections: keep one", pytrace=False)
    start = starts[0]
    end = next((k for k in range(start + 1, len(lines)) if re.match(r"#{1,2}\s", lines[k])),
               len(lines))
    return "\n".join(lines[start + 1: end])


def test_readme_layout_lists_every_module():
    section = _layout_section(README.read_text(encoding="utf-8"))
    assert section is not None, (
        "README.md has no '## Layout' section: add one with a line per module, "
        "e.g. `nldist/scores/block.py` — one-line role")
    listed = set(re.findall(r"`(nldist/[^`\s:]*)", section))
    expected = set()
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if "__pycache__" in rel.parts or rel.parts[1] == "examples":
            continue
        if rel.name == "__init__.py" and len(rel.parts) > 2:
            continue  # a subpackage's __init__; nldist/__init__.py itself is listed
        expected.add(rel.as_posix())
    missing = sorted(expected - {p for p in listed if p.endswith(".py")})
    stale = sorted(p for p in listed if not (ROOT / p).exists())
    problems = ([f"{p}: not listed in README.md '## Layout'" for p in missing]
                + [f"{p}: listed in README.md '## Layout' but does not exist" for p in stale])
    fail_if("README layout out of date", problems)


def test_ruff_is_clean():
    """`ruff check` over the package, tests, benchmarks and scripts (the style the
    pyproject declares; issue 25: ruff ran nowhere in CI)."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    r = subprocess.run([ruff, "check", "--output-format", "concise", "nldist", "tests",
                        "bench", "docs"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
