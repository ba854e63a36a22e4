"""The one config tree (dataclasses loaded from YAML with dotted overrides), its checks, and the typed contracts
between stages. `from dlma_ray.config import load_config, Config, ConfigError` is the public face; the tree lives
in `tree.py`, the checks in `checks.py`, the contracts in `interfaces.py`."""

from dlma_ray.config.checks import ConfigError
from dlma_ray.config.tree import (
    Config, DataConfig, EvalConfig, GenerationConfig, ModelConfig, PairConfig, ResourcesConfig, RoundsConfig,
    RunConfig, ScoringConfig, SelfContrastConfig, TrainConfig, apply_overrides, config_diff, config_from_dict,
    load_config,
)

__all__ = ["Config", "ConfigError", "DataConfig", "EvalConfig", "GenerationConfig", "ModelConfig", "PairConfig",
           "ResourcesConfig", "RoundsConfig", "RunConfig", "ScoringConfig", "SelfContrastConfig", "TrainConfig",
           "apply_overrides", "config_diff", "config_from_dict", "load_config"]
