"""Experiment configuration: YAML files with base inheritance and ``key.sub=value`` overrides, validated into
typed objects (``schema.Config``) at load time."""

from segkit.config.loader import load_config, parse_overrides
from segkit.config.schema import Config

__all__ = ["Config", "load_config", "parse_overrides"]
