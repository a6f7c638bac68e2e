"""The package's four kinds of module and which may import which (read from the source)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "bnjax"
FRONT_ENDS = {"bnjax._frontend", "bnjax.linen", "bnjax.nnx", "bnjax.equinox"}
APPLICATIONS = ("bnjax.demo", "bnjax.bench")
# What the applications share and the library never imports: the install command of an extra.
APPLICATION_SUPPORT = "bnjax._extras"
# The one private import of an application: the accelerator benchmark compiles bnjax's TPU
# statistics without their rarely taken second pass (bench.common_path), a lowering that no
# public option selects, from the statistics' own table of methods.
MEASURED_INTERNALS = {"_compiled.py": "bnjax._core.stats"}


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path):
    """The absolute names of every module ``path`` imports (``from . import x`` gives ``pkg.x``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            if node.level and not node.module:  # from . import x: x is a module
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif node.level:  # from .m import x: m, and m.x in case x is a module
                found.add(f"{base}.{node.module}")
                found.update(f"{base}.{node.module}.{alias.name}" for alias in node.names)
            else:  # from jax import lax: jax and jax.lax
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(kind):
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.glob(f"{kind}/*.py"))}


def within(name, *packages):
    """Whether the module (or name) ``name`` is one of ``packages`` or inside one."""
    return any(name == p or name.startswith(p + ".") for p in packages)


def bnjax_imports(imported):
    return {m for m in imported if m.startswith("bnjax.")}


def test_the_four_kinds_are_folders_or_named_modules():
    top = {p.name for p in PACKAGE.iterdir() if not p.name.startswith(("__pycache__", "."))}
    assert top == {
        "__init__.py", "py.typed",  # the public names
        "_core", "_tools",  # the library
        "_frontend.py", "linen.py", "nnx.py", "equinox.py",  # the Flax and Equinox front ends
        "demo", "bench",  # the applications
        "_extras.py",  # the applications' shared install hints
    }  # fmt: skip


def test_the_core_needs_jax_only_and_imports_nothing_above_it():
    core = modules("_core")
    # every way of computing statistics is a step of the core's path, in the core
    assert {"bnjax._core.ghost", "bnjax._core.renorm", "bnjax._core.stats"} <= set(core)
    for name, imported in core.items():
        assert not {m for m in imported if m.split(".")[0] in ("flax", "optax", "equinox")}, name
        outside = {m for m in bnjax_imports(imported) if not within(m, "bnjax._core")}
        assert not outside, (name, outside)


def test_the_tools_build_on_the_core_only():
    for name, imported in modules("_tools").items():
        for m in bnjax_imports(imported):
            assert within(m, "bnjax._core"), (name, m)


def test_the_front_ends_do_no_math_and_the_library_never_imports_its_applications():
    library = {**modules("_core"), **modules("_tools")}
    library.update({module_name(PACKAGE / f): imports_of(PACKAGE / f) for f in (
        "__init__.py", "_frontend.py", "linen.py", "nnx.py", "equinox.py")})  # fmt: skip
    for name, imported in library.items():
        assert not any(m.startswith((*APPLICATIONS, APPLICATION_SUPPORT)) for m in imported), name
    for name in FRONT_ENDS:
        for m in bnjax_imports(library[name]):
            # the core's entry point, options, containers and checks; never stats or transform
            assert not within(m, "bnjax._core.stats", "bnjax._core.transform"), (name, m)
        assert "jax.lax" not in library[name], name


def test_the_applications_use_public_names_only():
    for kind in APPLICATIONS:
        for path in (PACKAGE / kind.split(".")[1]).glob("*.py"):
            for m in bnjax_imports(imports_of(path)):
                private = [p for p in m.split(".")[1:] if p.startswith("_")]
                allowed = (kind, APPLICATION_SUPPORT, MEASURED_INTERNALS.get(path.name, kind))
                assert within(m, *allowed) or not private, (path.name, m)
