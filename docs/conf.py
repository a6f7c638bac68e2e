"""Sphinx configuration of the bnjax documentation site.

Build: ``python -m sphinx -b html docs docs/_build/html`` from the repository root (the test
suite builds it with ``-W --keep-going -n``: warnings are errors, nitpicky). Nothing is fetched:
intersphinx reads the inventories committed under ``docs/_inventories`` (written by
``docs/make_inventories.py``), and math is typeset by Debian's MathJax (``libjs-mathjax``),
copied into the site.
"""

import os
import pathlib
import re
import shutil
import sys
import tempfile

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # the checkout's bnjax, also for the notebook kernels
sys.path.insert(0, str(DOCS / "_ext"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)
# The executed pages run on the CPU, quietly; a second process (the notebooks' kernels) inherits.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The kernels leave C-level stderr (XLA's and the accelerator plugins' start-up logs) on the
# terminal instead of in the pages; Python's own warnings and prints still show.
_IPYTHONDIR = pathlib.Path(tempfile.mkdtemp(prefix="bnjax-docs-ipython-"))
(_IPYTHONDIR / "profile_default").mkdir()
(_IPYTHONDIR / "profile_default" / "ipython_kernel_config.py").write_text(
    "c.IPKernelApp.capture_fd_output = False\n"
)
os.environ["IPYTHONDIR"] = str(_IPYTHONDIR)

import bnjax  # noqa: E402

project = "bnjax"
author = "bnjax developers"
copyright = "the bnjax developers, Apache-2.0"  # noqa: A001
release = version = bnjax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "myst_nb",
    "api_coverage",
    "local_mathjax",
]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]
suppress_warnings = []
nitpicky = True
# jax.typing.ArrayLike, the type of the public inputs, expands in signatures to a union whose
# NumPy scalar members NumPy's inventory does not list as classes.
nitpick_ignore = [("py:class", "numpy.bool"), ("py:class", "numpy.number")]

# API reference: Google-style docstrings, type hints in the descriptions.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # defaults as written (jnp.float32), not their repr
autodoc_class_signature = "separated"
autodoc_default_options = {"exclude-members": "__init__, __new__"}
python_use_unqualified_type_names = True
add_module_names = False

# Links into the ecosystem's documentation, from inventories in the repository (never fetched).
INVENTORIES = DOCS / "_inventories"
intersphinx_mapping = {
    name: (url, str(INVENTORIES / f"{name}.inv"))
    for name, url in {
        "python": "https://docs.python.org/3/",
        "jax": "https://docs.jax.dev/en/latest/",
        "flax": "https://flax.readthedocs.io/en/latest/",
        "optax": "https://optax.readthedocs.io/en/latest/",
        "equinox": "https://docs.kidger.site/equinox/",
        "numpy": "https://numpy.org/doc/stable/",
    }.items()
}
intersphinx_timeout = 1

# Executed pages: the guides (MyST markdown notebooks) and the notebooks, run at every build.
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = 1800
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_title = f"bnjax {version}"
html_static_path = ["_static"]
html_css_files = ["bnjax.css"]
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
}
html_context = {"default_mode": "light"}  # the theme's colour mode before a reader picks one
html_favicon = "_static/favicon.svg"
html_last_updated_fmt = None
html_show_sourcelink = False

# Math: Debian's MathJax 2 (libjs-mathjax), copied into the site by local_mathjax.
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS_CHTML"
# myst-nb marks its pages tex2jax_ignore (no $ math in text): typeset Sphinx's math elements.
mathjax2_config = {
    "messageStyle": "none",
    "tex2jax": {
        "inlineMath": [["\\(", "\\)"]],
        "displayMath": [["\\[", "\\]"]],
        "processEscapes": True,
        "ignoreClass": "document|tex2jax_ignore|mathjax_ignore",
        "processClass": "math",
    },
    "CommonHTML": {"linebreaks": {"automatic": True}},
}


# Docstrings are plain text that writes |x| for an absolute value; reStructuredText would read
# |x| as a substitution, so such bars are escaped (doctest lines and literals are left alone).
_BARS = re.compile(r"(?<![\\`|])\|([^|`\s][^|`]*?)\|(?![|`_])")


def _escape_bars(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        if not line.lstrip().startswith((">>>", "...")) and "``" not in line:
            lines[i] = _BARS.sub(r"\\|\1\\|", line)


# Type hints name some classes by the private module that defines them; the inventories have the
# public name. Renamed before intersphinx (priority 500) resolves the reference.
_PUBLIC_NAMES = {"equinox.nn._stateful.State": "equinox.nn.State"}


def _public_target(app, env, node, contnode):
    public = _PUBLIC_NAMES.get(node.get("reftarget"))
    if public is not None:
        node["reftarget"] = public


def setup(app):
    """Connects the docstring fix and the public names above."""
    app.connect("autodoc-process-docstring", _escape_bars)
    app.connect("missing-reference", _public_target, priority=400)
    app.connect("build-finished", lambda app, exception: shutil.rmtree(_IPYTHONDIR, True))
