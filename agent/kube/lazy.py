"""The ``kubernetes`` package imported lazily: the part podlb uses, not all of it.

``import kubernetes`` runs package ``__init__`` files that import every API class and all of
the ~700 model classes: measured, ``import kubernetes.client`` costs 62 MiB of RSS, the
modules podlb uses (the API client, three API classes, the configuration loaders) about 3 MiB.
:func:`install` puts stand-ins for those packages into ``sys.modules`` before anything imports
them: real package modules (the same spec, path and version) that import each name of their
``__init__`` on first use, as that ``__init__`` would have. ``kubernetes.client.V1Pod`` or
``kubernetes.client.models.V1Lease`` (the client's deserializer) still resolve, only later.

Installed by ``agent.kube`` (the only importer of the client) before its first import of it; a
no-op when ``kubernetes`` was imported already.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

# Packages whose __init__ imports what it exports: parents first.
PACKAGES = ("kubernetes", "kubernetes.client", "kubernetes.client.api", "kubernetes.client.models")
_FROM = re.compile(r"^from (kubernetes\.[\w.]+) import (\w+)[ \t]*$", re.M)
_SUBMODULE = re.compile(r"^from \. import (\w+)[ \t]*$", re.M)
_CONSTANT = re.compile(r'^(__\w+__) = "([^"]*)"[ \t]*$', re.M)


def exports(package: str, source: str) -> dict[str, tuple[str, str | None]]:
    """What a package's ``__init__`` source binds: name -> (module, attribute or None for the
    module itself)."""
    names: dict[str, tuple[str, str | None]] = {
        name: (module, name) for module, name in _FROM.findall(source)
    }
    names.update({name: (f"{package}.{name}", None) for name in _SUBMODULE.findall(source)})
    return names


class _Resolver:
    """A lazy package's module ``__getattr__`` (PEP 562) and ``__dir__``."""

    def __init__(self, module: ModuleType, names: dict[str, tuple[str, str | None]]) -> None:
        self.module = module
        self.names = names

    def getattr(self, name: str) -> Any:
        target = self.names.get(name)
        if target is None:
            raise AttributeError(f"module {self.module.__name__!r} has no attribute {name!r}")
        value: Any = importlib.import_module(target[0])
        if target[1] is not None:
            value = getattr(value, target[1])
        setattr(self.module, name, value)  # resolved once
        return value

    def dir(self) -> list[str]:
        return sorted(set(self.module.__dict__) | set(self.names))


def install() -> bool:
    """Put the lazy packages in place; False (nothing done) if ``kubernetes`` is imported
    already or is not where expected."""
    if "kubernetes" in sys.modules:
        return False
    made: list[str] = []
    try:
        for package in PACKAGES:
            spec = importlib.util.find_spec(package)
            if spec is None or spec.origin is None or spec.submodule_search_locations is None:
                raise ImportError(package)
            source = Path(spec.origin).read_text(encoding="utf-8")
            module = importlib.util.module_from_spec(spec)  # not executed: no eager imports
            module.__dict__.update(_CONSTANT.findall(source))  # __version__, __project__
            resolver = _Resolver(module, exports(package, source))
            module.__dict__["__getattr__"] = resolver.getattr
            module.__dict__["__dir__"] = resolver.dir
            sys.modules[package] = module
            made.append(package)
            parent, _, child = package.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)
    except (ImportError, OSError):
        for package in made:  # leave the ordinary import to do its work
            del sys.modules[package]
        return False
    return True
