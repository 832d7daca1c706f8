"""Test helper shared by the store-build tests: a built store's files, for byte-for-byte comparison."""

from __future__ import annotations

from pathlib import Path


def store_files(store: Path) -> dict[str, bytes]:
    """Every file of a store but the manifest, by relative path."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}
