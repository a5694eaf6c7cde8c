"""Configuration: the TOML schema, its defaults and its loader."""

from agent.config.schema import (
    Config,
    ConfigError,
    ControlConfig,
    DaemonConfig,
    DnsmasqConfig,
    HostsFileConfig,
    StaticEntry,
)

__all__ = [
    "Config",
    "ConfigError",
    "ControlConfig",
    "DaemonConfig",
    "DnsmasqConfig",
    "HostsFileConfig",
    "StaticEntry",
]
