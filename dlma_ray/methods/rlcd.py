"""RLCD (arXiv 2307.12950) on DLMA's data: the same contrastive pairs, plain DPO, no self-reward."""

from __future__ import annotations

from dlma_ray.methods.base import Method, register


@register
class Rlcd(Method):
    name = "rlcd"
    order = 10
    summary = "contrastive pairs, DPO without the self-reward (DLMA with gamma = 0)"
