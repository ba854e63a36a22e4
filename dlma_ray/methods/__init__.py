"""The training methods, one file each; `train.method` names one. Importing this package imports every module
in its folder, so a decorated class (`@register`) is all a new method needs (docs/contributing.md, "Add a method").

    dlma                  generate (y+, y-) -> score: 4 contrastive passes + reference -> DLMA loss
    rlcd                  same data         -> score: reference only                   -> DPO
    dpo                   human pairs from data.source (no engine) -> reference         -> DPO
    context_distillation  generate (y+, y-) -> no model, length check only             -> SFT on y+
    self_contrast         N samples -> similarity filter -> reference                  -> grouped DPO

Every method writes the same generations and pairs tables (dlma_ray.core.schema), with NaN where it computes
nothing, so evaluation, the report and the comparison read any run alike.
"""

import importlib
import pkgutil

from dlma_ray.methods.base import Method, check, get, names, register, unregister

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Method", "check", "get", "names", "register", "unregister"]
