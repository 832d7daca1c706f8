"""pyproject.toml, environment.yml, README and .ci/run must agree with each other."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet

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
    # Anything besides the package and the torch pin would be a second source of truth.
    others = [e for e in _env_pip() if not e.startswith("-e")]
    assert [re.split(r"[=<>]", o)[0] for o in others] == ["torch"]
    deps = " ".join(_pyproject()["project"]["dependencies"])
    assert "torch" in deps


def test_python_versions_agree():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    version = python.split("=", 1)[1]
    assert version in SpecifierSet(_pyproject()["project"]["requires-python"])


def _torch_pin(text: str) -> str:
    pins = set(re.findall(r"torch==([\d.]+)", text))
    assert len(pins) == 1, pins
    return pins.pop()


def test_torch_pin_is_the_same_everywhere():
    pin = _torch_pin((ROOT / "environment.yml").read_text())
    assert _torch_pin((ROOT / ".ci" / "run").read_text()) == pin
    assert _torch_pin((ROOT / "README.md").read_text()) == pin
    assert pin in SpecifierSet(next(d for d in _pyproject()["project"]["dependencies"] if d.startswith("torch"))[5:])


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert match, "README must mark its test command with <!-- test-command -->"
    command = match.group(1).strip()
    ci_lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert ci_lines[-1] == command
