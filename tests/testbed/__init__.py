"""The testbed shared by tests, benchmarks and `make demo` (see README, "Testbed")."""
