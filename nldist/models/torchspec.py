"""Spec strings of ``torch:`` models: parsing and importing the factory (no torch import).

``torch:<module.path>:<factory>[(key=value,...)]``: ``<module.path>`` is an importable dotted
module name or a path or URL (``s3://bucket/nets.py``, read by the driver and by each worker
through fsspec) to a ``.py`` file; the factory returns a ``torch.nn.Module``
(:mod:`nldist.models.torchmodel` builds it). Kept apart so that validating a job does not
import torch.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import re
import types
from pathlib import Path
from typing import Any

import fsspec

from nldist.errors import NldistError

_TORCH_RE = re.compile(r"^torch:(?P<mod>.+):(?P<fac>[A-Za-z_][A-Za-z_0-9]*)(?:\((?P<kw>.*)\))?$")

MLP_RE = re.compile(r"^mlp:(?P<hidden>\d+(?:,\d+)*):(?P<C>\d+)(?::(?P<act>[a-z_]+))?$")
MLP_ACTS = ("relu", "tanh", "gelu", "silu", "softplus", "sigmoid")


def mlp_torch_spec(spec: str) -> str:
    """The ``torch:`` spec of ``mlp:<h1>,<h2>,...:<C>[:<act>]`` (a C-class MLP classifier:
    Linear layers with biases, ``act`` between them (default relu), C logits out)."""
    match = MLP_RE.match(spec.strip())
    if not match:
        raise NldistError(f"cannot read model spec {spec!r}; write mlp:<h1>,<h2>,...:<C>[:<act>]"
                          ", e.g. mlp:32:10 or mlp:64,32:10:gelu")
    C = int(match["C"])
    act = match["act"] or "relu"
    if C < 2:
        raise NldistError(f"mlp spec {spec!r} has C = {C} outputs; C is the number of classes "
                          "(>= 2); for one output use torch:nldist.examples.nets:mlp")
    if act not in MLP_ACTS:
        raise NldistError(f"unknown activation {act!r} in {spec!r}; use one of "
                          f"{', '.join(MLP_ACTS)}")
    hidden = "-".join(match["hidden"].split(","))
    return (f"torch:nldist.examples.nets:classifier(hidden='{hidden}',n_classes={C},"
            f"act='{act}')")


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_torch_spec(spec: str, check_import: bool = False) -> tuple[str, str, dict]:
    """Split ``torch:<module.path>:<factory>[(k=v,...)]`` into (module, factory, kwargs).

    With ``check_import`` also check, without running user code, that the module exists and
    defines the factory (:func:`check_factory`).
    """
    match = _TORCH_RE.match(spec.strip())
    if not match:
        raise NldistError(f"cannot read model spec {spec!r}; write torch:<module.path>:<factory>"
                          ", e.g. torch:nldist.examples.nets:mlp or torch:nets.py:make")
    kwargs: dict[str, Any] = {}
    if match["kw"]:
        for item in match["kw"].split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip().isidentifier():
                raise NldistError(f"cannot read factory argument {item!r} in {spec!r}; write "
                                  "key=value, e.g. mlp(hidden=32,act=tanh)")
            kwargs[key.strip()] = _literal(value.strip())
    if check_import:
        check_factory(match["mod"], match["fac"], spec)
    return match["mod"], match["fac"], kwargs


def _defines(source: str, name: str) -> bool:
    """Whether module source text binds ``name`` at top level (def, class, assignment,
    import)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return True  # let the real import report it
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (a.asname or a.name.split(".")[0]) == name for a in node.names):
            return True
    return False


def check_factory(mod: str, fac: str, spec: str) -> None:
    """Check that a ``torch:`` spec's module exists and defines its factory by reading the
    module's source (a schema check never runs user code). Modules without a readable
    ``.py`` source (compiled, namespace) are only located."""
    if mod.endswith(".py") and "://" in mod:
        origin = None
        if not _defines(_remote_source(mod, spec), fac):
            raise NldistError(f"module {mod!r} has no callable {fac!r} (model spec {spec!r}); "
                              "name a function returning a torch.nn.Module")
    elif mod.endswith(".py"):
        file = Path(mod).expanduser().resolve()
        if not file.exists():
            raise NldistError(f"model file {mod!r} in {spec!r} not found; give a path relative "
                              "to the working directory or an importable module name")
        origin: str | None = str(file)
    else:
        try:
            found = importlib.util.find_spec(mod)
        except (ImportError, ValueError) as exc:
            found, why = None, str(exc)
        else:
            why = "no such module"
        if found is None:
            raise NldistError(f"cannot import module {mod!r} of model spec {spec!r} ({why}); "
                              "install it or put it on PYTHONPATH of the driver and the workers")
        origin = found.origin if found.origin and found.origin.endswith(".py") else None
    if origin is not None and not _defines(Path(origin).read_text(), fac):
        raise NldistError(f"module {mod!r} has no callable {fac!r} (model spec {spec!r}); name "
                          "a function returning a torch.nn.Module")


def _remote_source(url: str, spec: str) -> str:
    """The text of a model file on object storage (``s3://.../nets.py``), read through
    fsspec with the standard credentials (AWS_* variables, fsspec config)."""
    try:
        with fsspec.open(url, "rt") as f:
            return f.read()
    except (OSError, ValueError) as exc:
        raise NldistError(f"cannot read model file {url!r} of {spec!r} ({type(exc).__name__}: "
                          f"{exc}); check the URL and credentials") from None


def _import(path: str, spec: str) -> Any:
    if path.endswith(".py") and "://" in path:
        source = _remote_source(path, spec)
        name = "nldist_user_" + hashlib.sha256(f"{path}\0{source}".encode()).hexdigest()[:12]
        if name not in _FILE_MODULES:
            module = types.ModuleType(name)
            module.__file__ = path
            exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 - the user's model
            _FILE_MODULES[name] = module
        return _FILE_MODULES[name]
    if path.endswith(".py"):
        file = Path(path).expanduser().resolve()
        if not file.exists():
            raise NldistError(f"model file {path!r} in {spec!r} not found; give a path relative "
                              "to the working directory or an importable module name")
        name = "nldist_user_" + hashlib.sha256(str(file).encode()).hexdigest()[:12]
        if name in _FILE_MODULES:
            return _FILE_MODULES[name]
        loader = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(loader)  # type: ignore[arg-type]
        loader.loader.exec_module(module)  # type: ignore[union-attr]
        _FILE_MODULES[name] = module
        return module
    try:
        return importlib.import_module(path)
    except ImportError as exc:
        raise NldistError(f"cannot import module {path!r} of model spec {spec!r} ({exc}); "
                          "install it or put it on PYTHONPATH of the driver and the workers"
                          ) from None


_FILE_MODULES: dict[str, Any] = {}


def import_factory(mod: str, fac: str, spec: str) -> Any:
    module = _import(mod, spec)
    factory = getattr(module, fac, None)
    if not callable(factory):
        raise NldistError(f"module {mod!r} has no callable {fac!r} (model spec {spec!r}); name "
                          "a function returning a torch.nn.Module")
    return factory


def takes_positional(factory: Any) -> bool:
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return True
    return bool(params) and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                               inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                               inspect.Parameter.VAR_POSITIONAL)
