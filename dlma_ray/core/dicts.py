"""Nested dicts (a config as YAML gives it, a run's saved config): what differs between two."""

from __future__ import annotations

from typing import Any


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "", common_only: bool = False) -> list[str]:
    """Key paths whose values differ between two config dicts (``common_only``: keys in both)."""
    keys = sorted(set(a) & set(b) if common_only else set(a) | set(b))
    out = []
    for k in keys:
        path = f"{prefix}.{k}" if prefix else k
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, path, common_only)
        elif va != vb:
            out.append(f"{path}: {va!r} -> {vb!r}")
    return out
