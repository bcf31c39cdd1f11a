"""Kubernetes API access: the only importer of the kubernetes client."""
