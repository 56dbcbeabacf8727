"""The phases of `make bench` (benchmarks/bench.py), one module each, and what they share."""
