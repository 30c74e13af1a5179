"""Start-up (issue 28, item 4): ``import nldist`` and ``nldist --version`` import no Dask,
pandas, zarr, torch or matplotlib; the public names load on first use and are the API's own
objects. Timings: bench/bench_startup.py (bench/RESULTS.md)."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nldist

HEAVY = ("dask", "distributed", "pandas", "zarr", "torch", "matplotlib", "pyarrow", "typer")


def _loaded_after(code: str) -> list[str]:
    probe = (f"import sys\n{code}\n"
             f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=120, check=True)
    return r.stdout.splitlines()[-1].split() if r.stdout.strip() else []


def test_import_nldist_loads_no_heavy_package():
    assert _loaded_after("import nldist; nldist.__version__; nldist.NldistError") == []


def test_version_loads_no_heavy_package():
    code = ("sys.argv = ['nldist', '--version']\nfrom nldist.__main__ import main\nmain()")
    assert _loaded_after(code) == []
    r = subprocess.run([sys.executable, "-m", "nldist", "--version"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"nldist {nldist.__version__}"


def test_console_script_entry_is_the_light_main():
    """pyproject's ``nldist`` script is ``nldist.__main__:main`` (not the Typer app, whose
    module imports Dask)."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^nldist = "nldist.__main__:main"$', text, re.M)


@pytest.mark.parametrize("name", sorted(nldist._LAZY))
def test_lazy_names_are_the_api_objects(name):
    value = getattr(nldist, name)
    assert value is getattr(importlib.import_module(nldist._LAZY[name]), name)
    assert name in dir(nldist) and name in nldist.__all__


def test_dir_lists_the_public_names_only():
    """Tab completion on ``nldist.`` offers the API, not the helpers the package imports."""
    assert set(dir(nldist)) == {*nldist.__all__, "__version__"}
    assert not {"Any", "sys", "importlib", "types", "annotations"} & set(dir(nldist))


def test_lazy_table_matches_the_type_checking_imports():
    """``_LAZY`` (what ``__getattr__`` loads) and the ``if TYPE_CHECKING:`` imports (what
    type checkers and tests/test_layers.py see) name the same things, and every lazy name
    is public."""
    tree = ast.parse(Path(nldist.__file__).read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If)
                 and getattr(n.test, "id", None) == "TYPE_CHECKING")
    imported = {a.name: n.module for n in block.body if isinstance(n, ast.ImportFrom)
                for a in n.names}
    assert imported == nldist._LAZY
    assert set(nldist._LAZY) <= set(nldist.__all__)


def test_scores_stays_the_function_after_the_subpackage_loads():
    """``nldist.scores`` is the public function even when the subpackage ``nldist.scores``
    is imported first (the import system binds a submodule on its parent)."""
    code = ("import nldist.scores.kinds, nldist\n"
            "assert callable(nldist.scores) and nldist.scores.__module__ == 'nldist.api'\n"
            "from nldist import scores\nassert callable(scores)\n"
            "from nldist.scores import kinds\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nldist.nope  # noqa: B018


HELP_HEAVY = ("dask", "distributed", "pandas", "zarr", "torch", "matplotlib", "pyarrow",
              "scipy")


@pytest.mark.parametrize("argv", [["--help"], ["select", "--help"], ["ingest", "--help"]])
def test_help_loads_no_heavy_package(argv):
    """``nldist --help`` and ``nldist CMD --help`` import the command line (typer, rich) and
    none of the front-door modules' Dask, pandas or zarr (3.7 s -> 0.3 s, RESULTS.md)."""
    probe = (f"import sys\nsys.argv = {['nldist', *argv]!r}\n"
             "from nldist.__main__ import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
             f"print('LOADED', *(m for m in {HELP_HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=120, env={**__import__("os").environ, "COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    assert "Usage: nldist" in r.stdout
    assert r.stdout.splitlines()[-1].split() == ["LOADED"]


def _cli_deferred_bindings() -> tuple[dict[str, str], dict[str, str]]:
    """(name -> module) of the ``if TYPE_CHECKING:`` imports of nldist/cli/fronts.py and of
    its ``else:`` ``_Deferred("...")`` bindings."""
    import nldist.cli.fronts as fronts

    tree = ast.parse(Path(fronts.__file__).read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If)
                 and getattr(n.test, "id", None) == "TYPE_CHECKING")
    imported = {a.asname or a.name: f"{n.module}.{a.name}" for n in block.body
                if isinstance(n, ast.ImportFrom) for a in n.names}
    deferred = {t.id: n.value.args[0].value for n in block.orelse if isinstance(n, ast.Assign)
                for t in n.targets}
    return imported, deferred


def test_cli_deferred_modules_match_the_type_checking_imports():
    """What the command line defers is what the import graph (tests/test_layers.py) sees:
    the ``TYPE_CHECKING`` imports and the ``_Deferred`` bindings name the same modules, and
    each deferred name resolves to that module's objects when a command runs; the other
    modules of nldist/cli/ bind them only from there (one ``if TYPE_CHECKING:`` block)."""
    import nldist.cli.fronts as fronts

    imported, deferred = _cli_deferred_bindings()
    assert imported == deferred and len(deferred) == 6
    for name, module in deferred.items():
        real = importlib.import_module(module)
        proxy = getattr(fronts, name)
        assert module in repr(proxy)
        public = [a for a in vars(real) if not a.startswith("_")]
        assert public and all(getattr(proxy, a) is getattr(real, a) for a in public)
    with pytest.raises(AttributeError):
        fronts.pipeline.no_such_name  # noqa: B018
    others = [p for p in Path(fronts.__file__).parent.glob("*.py") if p.name != "fronts.py"]
    assert others and not [p.name for p in others if "TYPE_CHECKING" in p.read_text()
                           or "_Deferred(" in p.read_text()]


def test_cli_reservoir_default_is_the_ingest_default():
    """The help shows the reservoir default without importing nldist.ingest: the two agree."""
    import nldist.cli as cli
    import nldist.ingest

    assert cli.RESERVOIR_ROWS == nldist.ingest.RESERVOIR_ROWS


@pytest.mark.parametrize("argv", [["example", "california"], ["example", "--list"],
                                  ["example", "california", "JOB"]])
def test_example_loads_no_heavy_package(argv, tmp_path):
    """``nldist example`` copies a shipped job file: it imports the command line and none of
    the job schema's pydantic models, Dask, pandas, zarr or SciPy (1.3-3 s -> the cost of
    ``nldist --help``, bench/RESULTS.md)."""
    argv = [str(tmp_path / "job.yaml") if a == "JOB" else a for a in argv]
    probe = (f"import sys\nsys.argv = {['nldist', *argv]!r}\n"
             "from nldist.__main__ import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
             f"print('LOADED', *(m for m in {(*HELP_HEAVY, 'nldist.jobs')!r} "
             "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].split() == ["LOADED"]
    if "california" in argv and len(argv) == 2:
        assert "model: glm:swish" in r.stdout
