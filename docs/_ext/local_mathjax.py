"""Copies Debian's MathJax 2 (``apt-get install libjs-mathjax``) into the built site.

The site typesets math offline: ``mathjax_path`` in ``conf.py`` points at ``_static/mathjax``,
which this extension fills with the part of ``/usr/share/javascript/mathjax`` that the
``TeX-AMS_CHTML`` configuration loads (about 2 MB of the package's 30).
"""

import pathlib
import shutil

from sphinx.errors import ExtensionError

SOURCE = pathlib.Path("/usr/share/javascript/mathjax")
# What MathJax.js?config=TeX-AMS_CHTML requests: the configuration, the TeX input, the
# CommonHTML output with its font data, the menu and zoom extensions, and the TeX web fonts.
PARTS = (
    "MathJax.js",
    "config/TeX-AMS_CHTML.js",
    "extensions",
    "jax/element",
    "jax/input/TeX",
    "jax/output/CommonHTML",
    "fonts/HTML-CSS/TeX/woff",
    "fonts/HTML-CSS/TeX/otf",
)


def _check_installed(app) -> None:
    if app.builder.format == "html" and not (SOURCE / "MathJax.js").is_file():
        raise ExtensionError(
            f"the site typesets math with Debian's MathJax, expected at {SOURCE}, which is "
            "missing: apt-get install libjs-mathjax"
        )


def _copy(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    target = pathlib.Path(app.outdir) / "_static" / "mathjax"
    for part in PARTS:
        source, destination = SOURCE / part, target / part
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination, dirs_exist_ok=True)
        else:
            shutil.copy2(source, destination)


def setup(app):
    """Registers the check (at start) and the copy (after the HTML is written)."""
    app.connect("builder-inited", _check_installed)
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
