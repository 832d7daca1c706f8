"""pyproject.toml, constraints.txt, environment.yml, README and .ci/run must agree with each other."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _env_pip() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pips = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pips) == 1, "environment.yml must have exactly one pip: section"
    return pips[0]


def test_environment_yml_installs_every_extra_of_pyproject():
    extras = set(_pyproject()["project"]["optional-dependencies"])
    editable = [e for e in _env_pip() if e.startswith("-e")]
    assert len(editable) == 1, "environment.yml must install the package itself with pip -e"
    match = re.fullmatch(r"-e \.\[([\w,\-]+)\]", editable[0])
    assert match, editable[0]
    assert set(match.group(1).split(",")) == extras


def test_environment_yml_declares_no_dependency_pyproject_lacks():
    # Anything besides the package and the constraints file would be a second source of truth.
    others = [e for e in _env_pip() if not e.startswith("-e")]
    assert others == ["-c constraints.txt"]


def test_python_versions_agree():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    version = python.split("=", 1)[1]
    assert version in SpecifierSet(_pyproject()["project"]["requires-python"])


# The libraries whose behaviour the tests depend on; each must have an exact pin.
MUST_PIN = {"ale-py", "gymnasium", "rliable", "torch", "jupyterlab", "ipywidgets", "anywidget", "plotly"}


def _constraints() -> dict[str, str]:
    """constraints.txt as {normalized name: exact version}; anything but `name==version` fails."""
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+]*)", line)
        assert match, f"constraints.txt: {line!r} is not an exact `name==version` pin"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = match.group(2)
    return pins


def _pyproject_specifiers() -> dict[str, SpecifierSet]:
    """Every requirement in pyproject.toml (dependencies and all extras) by normalized name."""
    project = _pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    specs: dict[str, SpecifierSet] = {}
    for req in map(Requirement, reqs):
        name = canonicalize_name(req.name)
        specs[name] = specs.get(name, SpecifierSet()) & req.specifier
    return specs


def test_constraints_pin_every_library_the_tests_depend_on():
    assert MUST_PIN <= set(_constraints())


def test_every_pin_is_a_declared_dependency_and_inside_its_range():
    specs = _pyproject_specifiers()
    for name, version in _constraints().items():
        assert name in specs, f"constraints.txt pins {name}, which pyproject.toml does not declare"
        assert specs[name].contains(version, prereleases=True), (
            f"constraints.txt pins {name}=={version}, outside pyproject.toml's {specs[name]}"
        )


def test_every_install_path_uses_the_constraints_file_and_no_pin_of_its_own():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    readme_installs = [line for line in readme.splitlines() if re.search(r"pip install .*-e ", line)]
    ci_installs = [line for line in ci.splitlines() if re.search(r"pip install .*-e ", line)]
    assert readme_installs and ci_installs
    for line in readme_installs + ci_installs:
        assert "-c constraints.txt" in line, line
    # A version pinned anywhere else would drift from constraints.txt.
    env = (ROOT / "environment.yml").read_text()
    for where, text in [("README.md", readme), (".ci/run", ci), ("environment.yml", env)]:
        assert not re.search(r"[A-Za-z0-9_-]==\d", text), f"{where} pins a version itself"


def test_prose_names_the_pinned_torch_version():
    # The README tells GPU users which CUDA build of torch to install first.
    mentioned = set(re.findall(r"torch (\d+\.\d+\.\d+)", (ROOT / "README.md").read_text()))
    assert mentioned == {_constraints()["torch"]}


def test_installed_versions_are_the_pinned_ones():
    # The tests' expectations (action sets, env semantics, CIs) hold for these versions; a CUDA
    # build of torch (2.13.0+cu128) counts as its public version.
    pins = _constraints()
    for name in MUST_PIN:
        installed = Version(importlib.metadata.version(name)).public
        assert installed == pins[name], f"{name} {installed} installed, constraints.txt pins {pins[name]}"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    # Other markers (tests/test_readme.py's) may sit between the marker and its block.
    match = re.search(r"<!-- test-command -->\s*(?:<!--.*?-->\s*)*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert match, "README must mark its test command with <!-- test-command -->"
    command = match.group(1).strip()
    ci_text = (ROOT / ".ci" / "run").read_text()
    ci_lines = [line.strip() for line in ci_text.splitlines() if line.strip() and not line.startswith("#")]
    assert ci_lines[-1] == command
