"""Netlink and /proc inspection of pod network namespaces: plain data out, no Kubernetes."""

from .inspector import DEFAULT_NETNS_DIRS, Inspector, InspectorConfig

__all__ = ["DEFAULT_NETNS_DIRS", "Inspector", "InspectorConfig"]
