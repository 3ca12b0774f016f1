"""The two install paths (requirements.txt for make, Pipfile for pipenv) must pin the same versions."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pipfile_matches_requirements():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s]+)", line).groups()
            pins[name.lower()] = version
    pipfile = tomllib.loads((ROOT / "Pipfile").read_text())
    assert {k.lower(): v.removeprefix("==") for k, v in pipfile["packages"].items()} == pins
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert int(pins["setuptools"].split(".")[0]) < 81  # Sacred 0.8.7 imports pkg_resources


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
