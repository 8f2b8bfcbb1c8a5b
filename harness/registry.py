"""One registry pattern for every kind of plugin.

Built-in plugins are declared lazily (``"module:attr"``) so that ``sdd-bench ls`` and
config validation never import torch; the module is imported on first use and its
``@register`` decorator fills in the class.  Third-party plugins are discovered through the
entry-point group ``sdd_bench.<kind>`` (e.g. ``sdd_bench.defenses``), whose value is the
same ``"module:attr"`` string.

A registry may hold a *contract* (``set_contract``): a function ``check(name, obj)`` that raises ``TypeError`` with
one line naming what a registration lacks and the fix.  The defense and attack packages set theirs
(``defenses.base.check_defense_class``, ``attacks.base.check_attack_preset``), so a plugin that does not fulfil its
base class is refused when it is registered or first loaded, not deep inside a run.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable

from .errors import RegistryError


@dataclass
class Entry:
    name: str
    target: str | None  # "module:attr" for lazy entries
    description: str
    obj: Any = None
    source: str = "builtin"


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._eps_loaded = False
        self._contract: Callable[[str, Any], None] | None = None
        self._made_contract: Callable[[str, Any], None] | None = None

    def set_contract(self, check: Callable[[str, Any], None], made: Callable[[str, Any], None] | None = None) -> None:
        """Check every registration (decorator, lazy load, entry point) with ``check(name, obj)``, which raises
        ``TypeError`` naming what is missing and the fix; registrations made before are checked now.  ``made``, when
        given, checks what a registered factory makes (an attack preset's ``make``): :meth:`check_made` calls it, so
        the core checks a plugin's product without importing the plugin package."""
        self._contract = check
        self._made_contract = made
        for e in self._entries.values():
            if e.obj is not None:
                self._check(e.name, e.obj)

    def check_made(self, name: str, obj: Any) -> None:
        """Raise ``TypeError`` (what is missing and the fix) unless ``obj``, made by the registration ``name``,
        fulfils the made-contract set with :meth:`set_contract`; nothing to check without one."""
        if self._made_contract is not None:
            self._made_contract(name, obj)

    def _check(self, name: str, obj: Any) -> None:
        if self._contract is None:
            return
        try:
            self._contract(name, obj)
        except TypeError as err:
            raise RegistryError(str(err)) from None

    # -- declaration -------------------------------------------------------------------
    def lazy(self, name: str, target: str, description: str, aliases: tuple[str, ...] = ()) -> None:
        """Declare a plugin whose module is imported only when the plugin is used."""
        self._entries[name] = Entry(name, target, description)
        for a in aliases:
            self._aliases[a] = name

    def register(self, name: str, description: str | None = None, aliases: tuple[str, ...] = ()) -> Callable:
        """Class/function decorator: ``@DEFENSES.register("sdd")``."""

        def deco(obj):
            desc = description or _first_line(obj.__doc__) or ""
            old = self._entries.get(name)
            if old is not None and old.obj is not None and old.obj is not obj:
                raise RegistryError(f"{self.kind} {name!r} is registered twice ({old.obj!r} and {obj!r}).")
            self._check(name, obj)
            target = old.target if old else None
            self._entries[name] = Entry(name, target, old.description if (old and old.description) else desc, obj,
                                        old.source if old else "builtin")
            for a in aliases:
                self._aliases[a] = name
            _set_name(obj, name)
            return obj

        return deco

    # -- lookup ------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        if self._eps_loaded:
            return
        self._eps_loaded = True
        group = f"sdd_bench.{self.kind}"
        try:
            eps = metadata.entry_points(group=group)
        except Exception:  # pragma: no cover - very old importlib.metadata
            eps = []
        for ep in eps:
            if ep.name not in self._entries:
                self._entries[ep.name] = Entry(ep.name, ep.value, f"(plugin from {ep.dist.name if ep.dist else '?'})",
                                               source="entry-point")

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries or name in self._aliases

    def canonical(self, name: str) -> str:
        self._load_entry_points()
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        choices = list(self._entries) + list(self._aliases)
        close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise RegistryError(
            f"Unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} {name!r}.{hint} "
            f"Known: {', '.join(sorted(self._entries))}. (`sdd-bench ls {self.kind}` lists them.)"
        )

    def get(self, name: str) -> Any:
        name = self.canonical(name)
        e = self._entries[name]
        if e.obj is None:
            if e.target is None:
                raise RegistryError(f"{self.kind} {name!r} has no implementation.")
            mod, _, attr = e.target.partition(":")
            try:
                module = importlib.import_module(mod)
            except ImportError as err:
                raise RegistryError(
                    f"{self.kind} {name!r} needs a package that is not installed ({err}). "
                    f"Install the matching extra, e.g. `pip install 'sdd-bench[cpu]'`."
                ) from err
            obj = getattr(module, attr, None)
            if obj is None:
                raise RegistryError(f"{self.kind} {name!r}: {mod} has no attribute {attr!r}.")
            if e.obj is None:  # the module's @register may already have filled it
                self._check(name, obj)
                e.obj = obj
                _set_name(obj, name)
        return e.obj

    def describe(self) -> list[tuple[str, str]]:
        out = []
        for n in self.names():
            e = self._entries[n]
            aliases = [a for a, t in self._aliases.items() if t == n]
            d = e.description + (f" (alias: {', '.join(aliases)})" if aliases else "")
            out.append((n, d))
        return out


def _set_name(obj: Any, name: str) -> None:
    """Record the registry name on a class, function or (frozen) instance."""
    if isinstance(obj, type) or callable(obj) and not hasattr(obj, "__dataclass_fields__"):
        setattr(obj, "registry_name", name)
    else:  # frozen dataclass instances (datasets, attack presets)
        object.__setattr__(obj, "registry_name", name)


def _first_line(doc: str | None) -> str:
    if not doc:
        return ""
    for line in doc.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


# The built-in plugin packages, in the order they are declared: each one's __init__ registers its plugins (lazily).
# The core names them here as strings, the way entry points name third-party plugins, and never imports them:
# :func:`declare_builtin_plugins` loads them (tests/test_layers.py checks the direction of imports).
BUILTIN_PLUGIN_PACKAGES = ("sdd_bench.attacks", "sdd_bench.defenses", "sdd_bench.judges")


def declare_builtin_plugins() -> None:
    """Load the built-in plugin packages, so that their registrations are in the registries (idempotent)."""
    for package in BUILTIN_PLUGIN_PACKAGES:
        importlib.import_module(package)


DEFENSES = Registry("defenses")
ATTACKS = Registry("attacks")
JUDGES = Registry("judges")
MODELS = Registry("models")
DATASETS = Registry("datasets")
TASKS = Registry("tasks")
BACKENDS = Registry("backends")

REGISTRIES = {r.kind: r for r in (DEFENSES, ATTACKS, JUDGES, MODELS, DATASETS, TASKS, BACKENDS)}


def registry(kind: str) -> Registry:
    if kind in REGISTRIES:
        return REGISTRIES[kind]
    close = difflib.get_close_matches(kind, list(REGISTRIES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise RegistryError(f"Unknown plugin kind {kind!r}.{hint} Kinds: {', '.join(REGISTRIES)}.")
