"""Import the packages that declare the built-in plugins (cheap: modules load lazily).

The core names the plugin packages in one place (``harness/registry.py``), as strings, the way entry points
name third-party plugins (``harness/registry.py``): the core imports no plugin package, the packages register
themselves when loaded (tests/test_layers.py checks the direction of imports).
"""
from __future__ import annotations

from .registry import BUILTIN_PLUGIN_PACKAGES, declare_builtin_plugins  # noqa: F401  (re-exported)

_done = False


def declare() -> None:
    global _done
    if _done:
        return
    _done = True
    from . import data, generation, models  # noqa: F401  (register datasets, backends, models)
    declare_builtin_plugins()
    from . import capability_tasks  # noqa: F401
