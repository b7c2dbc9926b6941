"""Config defaults, packaged YAML configs and the loader."""

from msadkit.config.defaults import DEFAULTS, default_config
from msadkit.config.loader import dump_config, list_packaged_configs, load_config, resolve_config_path

__all__ = ["DEFAULTS", "default_config", "dump_config", "list_packaged_configs", "load_config", "resolve_config_path"]
