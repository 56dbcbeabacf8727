"""Tests of the development tools (generator, demo)."""
