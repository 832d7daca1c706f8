"""Collect the wheels that `benchmarks/gpu_check.py` needs on the device machine into ``.whl/``.

The device machine (one H200; see the device tool's README) has Python 3.12 with torch, numpy,
scipy, pandas, safetensors, tqdm, pyyaml, opencv and seaborn, but not the environment stack
(gymnasium, its farama-notifications, ale-py with the game ROMs) nor rliable (and its arch),
which the evaluator's summary imports. Nothing there can be downloaded, so the wheels travel
with the working tree. This script, run here:

1. ``pip download``s each package at the version this project pins (``constraints.txt``, else
   the version installed here) as a CPython 3.12 manylinux x86-64 wheel, one package at a time,
   into ``.whl/`` (ignored by git; about 5 MB in all);
2. where the registry has no such wheel (rliable 1.2.0 is published as a source distribution
   only), builds a wheel from the installed copy here, which works only for pure-Python
   packages (``Root-Is-Purelib``), with a fresh RECORD of sha256 hashes;
3. checks every wheel's ``Requires-Dist`` against what the device has (`DEVICE_HAS`) and the
   wheels collected, so nothing is missing there;
4. prints the ``run`` call to make: ``carry: [".whl"]`` and a command that installs the wheels
   offline into /tmp/site and runs the check::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; \\
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log

Usage: ``python benchmarks/prepare_device_wheels.py [--dest .whl] [--python 3.12]``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import importlib.metadata as md
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: What gpu_check imports that the device's Python lacks (distribution names).
NEEDED = ("gymnasium", "farama-notifications", "ale-py", "rliable", "arch")

#: Distributions the device image already holds (the device README's KINDS.md, 2026-11-17),
#: normalized; a wheel's requirement on one of these needs no wheel.
DEVICE_HAS = frozenset("""
absl-py cloudpickle numpy pandas scipy seaborn statsmodels typing-extensions safetensors tqdm pyyaml
opencv-python-headless torch matplotlib pillow packaging python-dateutil pytz six patsy formulaic
interface-meta wrapt narwhals importlib-resources
""".split())

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")

INSTALL_COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
    ".whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; "
)
CHECK_COMMAND = ("PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json 2>&1 "
                 "| tee $OUT/gpu_check.log")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions() -> dict[str, str]:
    """``name -> version`` from constraints.txt (the project's pins)."""
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==([^\s#;]+).*", line)
        if m:
            out[normalize(m.group(1))] = m.group(2)
    return out


def version_of(name: str, pins: dict[str, str]) -> str:
    if normalize(name) in pins:
        return pins[normalize(name)].split("+")[0]
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        raise SystemExit(f"{name} is neither pinned in constraints.txt nor installed here; install it first") from None


def download(name: str, version: str, dest: Path, python: str) -> bool:
    """pip download one binary wheel for the device; False if the registry has none."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           python, "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest),
           f"{name}=={version}"]
    return subprocess.run(cmd, capture_output=True, text=True).returncode == 0


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def wheel_from_installed(name: str, version: str, dest: Path) -> Path:
    """A wheel of the pure-Python distribution installed here (its RECORD's files, fresh hashes)."""
    dist = md.distribution(name)
    if dist.version != version:
        raise SystemExit(f"{name} {version} has no wheel in the registry and {dist.version} is installed here")
    wheel_meta = dist.read_text("WHEEL") or ""
    if "Root-Is-Purelib: true" not in wheel_meta:
        raise SystemExit(f"{name} {version} has no wheel for the device and is not pure Python: build it there")
    files = [f for f in dist.files or [] if "__pycache__" not in f.parts and not str(f).startswith("..")]
    info_dir = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    out = dest / f"{normalize(name).replace('-', '_')}-{version}-py3-none-any.whl"
    rows, record_name = [], f"{info_dir}/RECORD"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            arc = "/".join(f.parts)
            if arc == record_name or f.parts[-1] in ("INSTALLER", "REQUESTED", "direct_url.json"):
                continue
            data = Path(str(f.locate())).read_bytes()
            zf.writestr(arc, data)
            rows.append((arc, _record_hash(data), str(len(data))))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([*rows, (record_name, "", "")])
        zf.writestr(record_name, buf.getvalue())
    return out


def requirements(wheel: Path) -> list[str]:
    """Unconditional Requires-Dist names of a wheel (extras and other-Python markers skipped)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    out = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = line.split(":", 1)[1].strip()
            if "extra ==" in req or "python_version < \"3." in req:
                continue
            out.append(normalize(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", default=str(ROOT / ".whl"))
    p.add_argument("--python", default="3.12", help="the device's Python version")
    args = p.parse_args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    pins = pinned_versions()
    wheels = []
    for name in NEEDED:
        version = version_of(name, pins)
        for old in dest.glob(f"{normalize(name).replace('-', '_')}-*.whl"):
            if not old.name.startswith(f"{normalize(name).replace('-', '_')}-{version}-"):
                old.unlink()  # one version of each, or the offline install refuses
        if not download(name, version, dest, args.python):
            print(f"{name}=={version}: no binary wheel in the registry; building one from the installed copy")
            wheel_from_installed(name, version, dest)
        wheels.append(next(dest.glob(f"{normalize(name).replace('-', '_')}-{version}-*.whl")))
    have = {normalize(n) for n in NEEDED} | DEVICE_HAS
    missing = sorted({r for w in wheels for r in requirements(w)} - have)
    if missing:
        raise SystemExit(f"the wheels require {missing}, which neither the device nor .whl/ has: add them to NEEDED")
    size = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"{w.stat().st_size / 1e6:6.2f} MB  {w.name}")
    print(f"{len(wheels)} wheels, {size / 1e6:.1f} MB in {dest}")
    print("device run: carry=['.whl'], command:\n  " + INSTALL_COMMAND + CHECK_COMMAND)


if __name__ == "__main__":
    main()
