"""What ``gabench list`` shows, read from the plug-in registries' source without importing them.

Importing the registries (:data:`gabench.tasks.FAMILIES`, :data:`gabench.algorithms.ALGORITHMS`,
:data:`gabench.aggregators.AGGREGATORS`) imports torch and scikit-learn, seconds of start-up for
a listing. :func:`read_catalog` instead parses the source of those packages: the registry's
literal tuple of classes, each class's literal ``name``, ``description``, ``default_alpha`` and
the literal defaults of its ``__init__`` (inherited ones included, through base classes inside
gabench). A plug-in registered as usual is picked up with no extra work; one whose attributes
are not literals (or a registry built otherwise) makes :func:`read_catalog` fall back to
importing the registries, which gives the same listing, only slower. ``tests/test_cli.py``
checks that the static reading succeeds and equals :func:`imported_catalog`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gabench

#: Registry kind -> (package, registry variable).
REGISTRIES: dict[str, tuple[str, str]] = {
    "families": ("gabench.tasks", "FAMILIES"),
    "algorithms": ("gabench.algorithms", "ALGORITHMS"),
    "aggregators": ("gabench.aggregators", "AGGREGATORS"),
}
#: Where the outlier corruption modes are declared.
MODES = ("gabench.tasks._outliers", "MODES")


@dataclass(frozen=True)
class PluginInfo:
    """One registered plug-in as ``gabench list`` shows it.

    Attributes:
        name: Registry name.
        description: One line.
        default_alpha: The family's default inner learning rate (families only).
        params: ``(name, default)`` of each constructor parameter (families only).
    """

    name: str
    description: str
    default_alpha: float | None = None
    params: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Catalog:
    """Every registry's plug-ins in registry order, and the outlier modes."""

    families: tuple[PluginInfo, ...]
    algorithms: tuple[PluginInfo, ...]
    aggregators: tuple[PluginInfo, ...]
    outlier_modes: dict[str, tuple[str, ...]] = field(default_factory=dict)


def read_catalog() -> Catalog:
    """The catalog from the source (fast), or from the imported registries when the source is
    not plain enough to read statically."""
    try:
        return static_catalog()
    except NotStatic:
        return imported_catalog()


def imported_catalog() -> Catalog:
    """The catalog from the imported registries (imports torch and scikit-learn)."""
    from gabench.aggregators import AGGREGATORS
    from gabench.algorithms import ALGORITHMS
    from gabench.tasks import FAMILIES
    from gabench.tasks._outliers import MODES as modes

    return Catalog(
        families=tuple(PluginInfo(name, cls.description, cls.default_alpha,
                                  tuple((p.name, p.default) for p in cls.param_specs()))
                       for name, cls in FAMILIES.items()),
        algorithms=tuple(PluginInfo(name, cls.description) for name, cls in ALGORITHMS.items()),
        aggregators=tuple(PluginInfo(name, cls.description) for name, cls in AGGREGATORS.items()),
        outlier_modes=dict(modes),
    )


class NotStatic(Exception):
    """The source cannot be read without running it."""


def static_catalog() -> Catalog:
    """The catalog read from the source; :class:`NotStatic` when that is not possible."""
    source = _Source(Path(gabench.__file__).parent)
    base = source.resolve("gabench.tasks._base", "TaskFamily")
    assert base is not None
    param_specs = source.attributes(*base).get("param_specs")
    kinds = {}
    for kind, (package, variable) in REGISTRIES.items():
        infos = []
        for module, cls in source.registry(package, variable):
            attrs = source.attributes(module, cls)
            if kind == "families":
                if attrs.get("param_specs") is not param_specs:  # lists its parameters in code
                    raise NotStatic(cls.name)
                infos.append(PluginInfo(_value(attrs, "name"), _value(attrs, "description"),
                                        _value(attrs, "default_alpha"), _init_params(attrs)))
            else:
                infos.append(PluginInfo(_value(attrs, "name"), _value(attrs, "description")))
        kinds[kind] = tuple(infos)
    modes = source.constant(*MODES)
    return Catalog(kinds["families"], kinds["algorithms"], kinds["aggregators"],
                   {k: tuple(v) for k, v in modes.items()})


_UNKNOWN = object()


def _value(attrs: dict[str, Any], name: str) -> Any:
    value = attrs.get(name, _UNKNOWN)
    if value is _UNKNOWN or isinstance(value, ast.AST):
        raise NotStatic(name)
    return value


def _init_params(attrs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    init = attrs.get("__init__")
    if not isinstance(init, ast.FunctionDef):
        raise NotStatic("__init__")
    a = init.args
    if a.vararg or a.kwarg or a.posonlyargs:
        raise NotStatic("__init__ signature")
    positional = a.args[1:]  # without self
    if len(a.defaults) != len(positional) or any(d is None for d in a.kw_defaults):
        raise NotStatic("__init__ parameter without a default")
    pairs = list(zip(positional, a.defaults, strict=True))
    pairs += list(zip(a.kwonlyargs, a.kw_defaults, strict=True))  # type: ignore[arg-type]
    return tuple((arg.arg, _literal(default)) for arg, default in pairs)


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise NotStatic(ast.dump(node)[:80]) from None


class _Source:
    """The parsed modules of the gabench package (never imported)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.trees: dict[str, ast.Module] = {}

    def module(self, name: str) -> ast.Module:
        if name not in self.trees:
            parts = name.split(".")
            if parts[0] != "gabench":
                raise NotStatic(name)
            path = self.root.joinpath(*parts[1:])
            file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            try:
                self.trees[name] = ast.parse(file.read_text(), filename=str(file))
            except (OSError, SyntaxError, UnicodeDecodeError):
                raise NotStatic(name) from None
        return self.trees[name]

    def _imports(self, module: str) -> dict[str, tuple[str, str]]:
        """Local name -> (module, name) of the ``from X import Y`` statements of ``module``."""
        out = {}
        package = module if self._is_package(module) else module.rpartition(".")[0]
        for node in self.module(module).body:
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    out[alias.asname or alias.name] = (base, alias.name)
        return out

    def _is_package(self, module: str) -> bool:
        return self.root.joinpath(*module.split(".")[1:]).is_dir()

    def resolve(self, module: str, name: str) -> tuple[str, ast.ClassDef] | None:
        """The class ``name`` as seen from ``module``; None for a class outside gabench."""
        for node in self.module(module).body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return module, node
        imports = self._imports(module)
        if name in imports:
            source, original = imports[name]
            if source.split(".")[0] != "gabench":
                return None
            return self.resolve(source, original)
        raise NotStatic(f"{module}.{name}")

    def attributes(self, module: str, cls: ast.ClassDef) -> dict[str, Any]:
        """Class-level attributes (literal values, or the AST node when not literal) and methods,
        inherited ones included (first base first)."""
        attrs: dict[str, Any] = {}
        for base in reversed(cls.bases):
            if isinstance(base, ast.Name):
                found = self.resolve(module, base.id)
                if found is not None:
                    attrs.update(self.attributes(*found))
            elif not isinstance(base, ast.Attribute):  # e.g. nn.Module: outside gabench
                raise NotStatic(cls.name)
        for node in cls.body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else (
                node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None)
            if isinstance(target, ast.Name):
                attrs[target.id] = _literal_or_node(node.value)  # type: ignore[union-attr]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                attrs[node.name] = node
        return attrs

    def registry(self, package: str, variable: str) -> list[tuple[str, ast.ClassDef]]:
        """The classes of ``package.variable``, a dict literal or ``{cls.name: cls for cls in (...)}``."""
        value = self._assignment(package, variable)
        if isinstance(value, ast.DictComp) and len(value.generators) == 1:
            items = value.generators[0].iter
            if not isinstance(items, ast.Tuple | ast.List):
                raise NotStatic(variable)
            names = items.elts
        elif isinstance(value, ast.Dict):
            names = value.values
        else:
            raise NotStatic(variable)
        out = []
        for node in names:
            if not isinstance(node, ast.Name):
                raise NotStatic(variable)
            found = self.resolve(package, node.id)
            if found is None:
                raise NotStatic(node.id)
            out.append(found)
        return out

    def constant(self, module: str, variable: str) -> Any:
        """The literal value assigned to ``module.variable``."""
        return _literal(self._assignment(module, variable))

    def _assignment(self, module: str, variable: str) -> ast.expr:
        found = None
        for node in self.module(module).body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == variable
                                                    for t in node.targets):
                found = node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                    and node.target.id == variable and node.value is not None:
                found = node.value
            elif _mentions(node, variable) and found is not None:
                raise NotStatic(f"{module}.{variable} is changed after its assignment")
        if found is None:
            raise NotStatic(f"{module}.{variable}")
        return found


def _literal_or_node(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return node


def _mentions(node: ast.stmt, variable: str) -> bool:
    """``node`` is a module-level statement that may change ``variable`` (a call or assignment
    through it, e.g. ``FAMILIES.update(...)`` or ``FAMILIES["x"] = X``)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return False
    return any(isinstance(n, ast.Name) and n.id == variable for n in ast.walk(node))
