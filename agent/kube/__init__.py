"""Kubernetes API access: the only importer of the kubernetes client."""

from . import lazy

lazy.install()  # before any module of this package imports the client (see lazy.py)
