"""How to install one of bnjax's extras, for the copy of bnjax that is running.

bnjax is not published on a package index: ``pip install "bnjax[demo]"`` works
only where it is. The applications' messages say what works here instead.
"""

import importlib.metadata
import json
import os
import pathlib
import tomllib
import urllib.parse
import urllib.request
from typing import Optional

PACKAGE = pathlib.Path(__file__).resolve().parent


def install_command(
    extra: str, *, package: pathlib.Path = PACKAGE, cwd: Optional[str] = None
) -> str:
    r"""The pip command that installs ``extra`` for this copy of bnjax.

    - Run from a checkout (an editable install, or the checkout on the
      path): ``pip install -e ".[extra]"``, with the checkout's path in
      place of ``.`` when the working directory is elsewhere.
    - Installed from a folder or a wheel file: ``pip install "SOURCE[extra]"``
      (pip's record of where it came from, ``direct_url.json``).
    - Otherwise (from a package index): ``pip install "bnjax[extra]"``.

    Args:
      extra: the extra's name, e.g. ``"demo"``.
      package: the folder of the ``bnjax`` package (this one by default).
      cwd: the working directory (the current one by default).

    Returns:
      One command line.

    Examples:
      >>> import pathlib, tempfile
      >>> root = pathlib.Path(tempfile.mkdtemp())
      >>> _ = (root / "pyproject.toml").write_text('[project]\nname = "bnjax"\n')
      >>> install_command("demo", package=root / "bnjax", cwd=str(root))
      'pip install -e ".[demo]"'
    """
    root = package.parent
    if _is_checkout(root):
        here = pathlib.Path(cwd or os.getcwd()).resolve()
        return f'pip install -e "{"." if here == root.resolve() else root}[{extra}]"'
    source = installed_from()
    return f'pip install "{source or "bnjax"}[{extra}]"'


def _is_checkout(root: pathlib.Path) -> bool:
    """Whether ``root`` holds bnjax's own pyproject.toml."""
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text()).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return project.get("name") == "bnjax"


def installed_from(distribution: str = "bnjax") -> Optional[str]:
    """The local folder or file an installed distribution came from, or None.

    pip writes it to the distribution's ``direct_url.json`` (PEP 610) when
    installing from a path; an install from an index has none.
    """
    try:
        text = importlib.metadata.distribution(distribution).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        url = urllib.parse.urlparse(json.loads(text or "{}").get("url", ""))
    except (json.JSONDecodeError, AttributeError):
        return None
    if url.scheme != "file":
        return None
    return urllib.request.url2pathname(url.path)
