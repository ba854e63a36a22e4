"""The config reference, docs/reference/config.md, from the config tree's field docs (dlma_ray/config/tree.py):

    python -m dlma_ray.views.config_reference > docs/reference/config.md      (or: make references)

`dlma-ray config --reference` prints the same. It lives above the method registry (dlma_ray.methods), so the
reference lists the registered methods; tests/unit/config/test_tree.py fails when the file is not its output."""

from __future__ import annotations

import dataclasses
import sys
import typing

from dlma_ray import methods
from dlma_ray.config.tree import Config
from dlma_ray.config.checks import type_name


def reference_markdown(choices: dict[str, list[str]] | None = None) -> str:
    """Every field with its type, default and doc, as Markdown (the config reference). ``choices``: the
    allowed values of text fields checked by a higher layer (`train.method`: the method registry)."""
    choices = choices or {}
    lines = ["# Config reference", "", ("Generated from `dlma_ray/config/tree.py` by `make references` "
                                        "(`python -m dlma_ray.views.config_reference`); edit the field docs there, "
                                        "not this page."), ""]
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        cls = hints[section.name]
        lines += [f"## `{section.name}`", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        sub_hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            doc = f.metadata["doc"].replace("|", "\\|")
            key = f"{section.name}.{f.name}"
            kind = ("one of " + ", ".join(repr(c) for c in choices[key])) if key in choices \
                else type_name(sub_hints[f.name])
            lines.append(f"| `{key}` | {kind} | `{default!r}` | {doc} |")
        lines.append("")
    return "\n".join(lines)


def config_reference() -> str:
    return reference_markdown({"train.method": methods.names()})


if __name__ == "__main__":
    sys.stdout.write(config_reference())
