"""The install command the applications print, for each way bnjax can be installed."""

import json
import pathlib

import pytest

from bnjax import _extras


@pytest.fixture
def checkout(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "bnjax"\n')
    (tmp_path / "bnjax").mkdir()
    return tmp_path


def test_in_a_checkout_an_editable_install_of_the_checkout(checkout, tmp_path_factory):
    package = checkout / "bnjax"
    assert _extras.install_command("demo", package=package, cwd=str(checkout)) == (
        'pip install -e ".[demo]"'
    )
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    assert _extras.install_command("bench", package=package, cwd=str(elsewhere)) == (
        f'pip install -e "{checkout}[bench]"'
    )


def test_another_projects_folder_is_not_a_checkout(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\n')
    monkeypatch.setattr(_extras, "installed_from", lambda: None)
    assert _extras.install_command("demo", package=tmp_path / "bnjax") == (
        'pip install "bnjax[demo]"'
    )


def test_installed_from_a_wheel_file_the_command_installs_that_wheel(tmp_path, monkeypatch):
    wheel = tmp_path / "dist" / "bnjax-0.1.0-py3-none-any.whl"

    class Distribution:
        def read_text(self, name):
            assert name == "direct_url.json"
            return json.dumps({"url": wheel.as_uri(), "archive_info": {}})

    monkeypatch.setattr(_extras.importlib.metadata, "distribution", lambda name: Distribution())
    site = tmp_path / "site-packages"  # no pyproject.toml above the installed package
    assert _extras.install_command("demo", package=site / "bnjax") == (
        f'pip install "{wheel}[demo]"'
    )


def test_installed_from_an_index_the_command_installs_from_the_index(tmp_path, monkeypatch):
    class Distribution:
        def read_text(self, name):
            return None  # pip writes no direct_url.json for an index install

    monkeypatch.setattr(_extras.importlib.metadata, "distribution", lambda name: Distribution())
    assert _extras.installed_from() is None
    assert _extras.install_command("bench", package=tmp_path / "bnjax") == (
        'pip install "bnjax[bench]"'
    )


def test_in_this_checkout_the_command_is_an_editable_install():
    root = pathlib.Path(__file__).resolve().parents[1]
    assert _extras.install_command("demo", cwd=str(root)) == 'pip install -e ".[demo]"'
