"""The Podman source: containers, their aliases and pods as ``<name>.<zone>`` (README "Podman")."""

from .source import PodmanSource

__all__ = ["PodmanSource"]
