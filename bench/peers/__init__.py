"""Benchmark peers: Herald's logic written with other stream processors, run in environments of their own."""
