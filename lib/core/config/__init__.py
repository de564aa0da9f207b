"""Parameter sets: one declared schema, one loader.

A parameter file is YAML with the sections of the schema. Anything not in the schema, or of the wrong type,
stops the run with an error that names the key and what is allowed. Defaults live in the schema, so a
parameter file only states what it changes.

A package of one module per concern; its surface is what callers use (``config.load``, ``config.Config``,
``config.ParamError`` ...):

- schema.py      the dataclasses (sections, keys, defaults), Config and its section hashes, ParamError;
- loading.py     read_yaml (with ``base:`` chains), apply_overrides, from_dict, load;
- validation.py  ranges and cross-section checks of a built Config;
- checks.py      the checks steps register on the values only they know (shape names, backbones);
- hints.py       did you mean ..., every dotted key, a type in words.
"""
from . import checks
from .hints import did_you_mean, dotted_keys
from .loading import apply_overrides, from_dict, load, read_yaml
from .schema import (ClassifierConfig, ClusterConfig, Config, DataConfig, EmbeddingConfig, FidelityConfig,
                     FinetuneConfig, GatingConfig, GenerationConfig, MixingConfig, ModelConfig, ParamError,
                     PoolsConfig, SelectionConfig, TransferConfig)

__all__ = ["checks", "did_you_mean", "dotted_keys", "apply_overrides", "from_dict", "load", "read_yaml",
           "ClassifierConfig", "ClusterConfig", "Config", "DataConfig", "EmbeddingConfig", "FidelityConfig",
           "FinetuneConfig", "GatingConfig", "GenerationConfig", "MixingConfig", "ModelConfig", "ParamError",
           "PoolsConfig", "SelectionConfig", "TransferConfig"]
