"""Tooling around the engine: the benchmark, selftest and the inspection's pictures."""
