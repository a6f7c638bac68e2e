"""The documentation site: a strict build, then a real browser on the built pages.

One build per session (the ``site`` fixture) serves both: Sphinx with warnings as errors and
nitpicky references, the guides and notebooks executed (errors fail the build), and headless
Debian Chromium, driven by playwright, reading a page of each kind. Screenshots go to a
temporary folder, or to ``$BNJAX_DOCS_SHOTS`` where it is set.
"""

import functools
import http.server
import os
import pathlib
import subprocess
import sys
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"  # Debian's package: apt-get install chromium
sys.path.insert(0, str(DOCS))
sys.path.insert(0, str(DOCS / "_ext"))

import api_coverage  # noqa: E402
import make_inventories  # noqa: E402


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The built site's folder, and the build's log."""
    out = tmp_path_factory.mktemp("docs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-n", "-q"]
    build = subprocess.run(
        [*command, "-d", str(out / "doctrees"), str(DOCS), str(out / "html")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    return out / "html", build


@pytest.mark.slow
def test_the_site_builds_strictly(site):
    html, build = site
    assert build.returncode == 0, (build.stdout + build.stderr)[-6000:]
    for page in ("index", "api/core", "guides/from_flax", "notebooks/04_conv_nets", "search"):
        assert (html / f"{page}.html").is_file(), page
    assert (html / "_static" / "mathjax" / "MathJax.js").is_file()


def test_every_public_name_needs_an_entry():
    import bnjax.linen

    assert api_coverage.public_names(bnjax.linen) == ["BatchNorm", "recompute_population_stats"]
    documented = {f"bnjax.{name}" for name in bnjax.__all__} | {
        "bnjax.linen.BatchNorm",
        "bnjax.linen.recompute_population_stats",
        "bnjax.nnx.BatchNorm",
        "bnjax.equinox.BatchNorm",
        "bnjax.equinox.fold_into_linear",
        "bnjax.equinox.recompute_population_stats",
    }
    modules = {"bnjax.linen", "bnjax.nnx"}
    assert api_coverage.missing_entries(documented, modules) == [
        "bnjax.nnx.recompute_population_stats"
    ]
    assert api_coverage.missing_entries(documented - {"bnjax.init"}, modules - {"bnjax.nnx"}) == [
        "bnjax.init",
        "bnjax.nnx",
        "bnjax.nnx.recompute_population_stats",
    ]


def test_committed_inventories_are_what_the_script_writes():
    for site_name, (project, version, entries) in make_inventories.INVENTORIES.items():
        committed = (make_inventories.HERE / f"{site_name}.inv").read_bytes()
        assert committed == make_inventories.render(project, version, entries), site_name


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


@pytest.fixture(scope="session")
def server(site):
    html, build = site
    assert build.returncode == 0, "the site did not build (see test_the_site_builds_strictly)"
    handler = functools.partial(_Quiet, directory=str(html))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# page → what it must show besides loading cleanly
PAGES = {
    "index.html": {"math": True},
    "api/core.html": {"text": "bnjax.batch_norm"},
    "guides/precision.html": {"math": True},
    "notebooks/02_internal_covariate_shift.html": {"images": 1},
    "guides/from_pytorch.html": {"math": True, "text": "bnjax.from_torch"},
    "notebooks/07_equinox.html": {"images": 1},
}

IMAGES = """() => Promise.all([...document.images].map(image => {
    image.loading = "eager";
    return image.decode().then(() => image.naturalWidth, () => 0);
}))"""


def _open(browser, url, problems):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status}: {r.url}"))
    page.goto(url, wait_until="networkidle")
    return page


@pytest.mark.slow
def test_pages_in_a_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: apt-get install -y chromium"
    shots = pathlib.Path(os.environ.get("BNJAX_DOCS_SHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for path, expect in PAGES.items():
                problems: list = []
                page = _open(browser, f"{server}/{path}", problems)
                widths = page.evaluate(IMAGES)
                assert all(w > 0 for w in widths), f"{path}: an image does not decode: {widths}"
                assert len(widths) >= expect.get("images", 0), f"{path}: {len(widths)} images"
                if expect.get("math"):
                    page.wait_for_selector(".MathJax_CHTML", timeout=20_000)
                    assert page.locator(".MathJax_CHTML").count() > 0
                    assert page.locator(".MathJax_Error, merror").count() == 0, path
                if "text" in expect:
                    assert expect["text"] in page.inner_text("main"), path
                page.screenshot(
                    path=str(shots / (path.replace("/", "_") + ".png")), full_page=False
                )
                assert problems == [], f"{path}: {problems}"
                page.close()
            problems = []
            page = _open(browser, f"{server}/search.html?q=batch_norm", problems)
            page.wait_for_selector("#search-results ul.search li", timeout=20_000)
            results = page.locator("#search-results ul.search li a").all_inner_texts()
            assert any("batch_norm" in r for r in results), results
            page.screenshot(path=str(shots / "search.png"))
            assert problems == [], f"search: {problems}"
        finally:
            browser.close()
