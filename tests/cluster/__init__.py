"""A real single-node Kubernetes cluster as a test fixture (README.md beside this file)."""
