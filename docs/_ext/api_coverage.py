"""Fails the build when a public name of bnjax has no entry in the API reference.

The public names of a module are its ``__all__``; a module without one (``bnjax.linen`` and
``bnjax.nnx`` today) has as public names what it defines at top level without a leading
underscore and what it re-exports explicitly (``from x import y as y``, the convention type
checkers follow). A public name that is a module needs a ``py:module`` entry, any other name a
Python object entry (``autofunction``, ``autoclass``, ``py:class``...).
"""

import ast
import importlib
import inspect
import types

from sphinx.errors import SphinxError

MODULES = ("bnjax", "bnjax.linen", "bnjax.nnx", "bnjax.equinox")


def public_names(module: types.ModuleType) -> list:
    """The module's ``__all__``, or what it defines or re-exports explicitly."""
    if hasattr(module, "__all__"):
        return sorted(module.__all__)
    tree = ast.parse(inspect.getsource(module))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            names.update(a.name for a in node.names if a.asname == a.name)
    return sorted(n for n in names if not n.startswith("_"))


def missing_entries(documented_objects, documented_modules, modules=MODULES) -> list:
    """The fully qualified public names with no entry, in the order of ``modules``."""
    missing = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in public_names(module):
            qualified = f"{module_name}.{name}"
            is_module = isinstance(getattr(module, name), types.ModuleType)
            if qualified not in (documented_modules if is_module else documented_objects):
                missing.append(qualified)
    return missing


def _check(app, env) -> None:
    domain = env.domains["py"]
    missing = missing_entries(set(domain.objects), set(domain.modules))
    if missing:
        raise SphinxError(
            "the API reference has no entry for these public names: "
            + ", ".join(missing)
            + " (add an autofunction/autoclass/automodule for each under docs/api/)"
        )


def setup(app):
    """Runs the check once every page has been read."""
    app.connect("env-check-consistency", _check)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
