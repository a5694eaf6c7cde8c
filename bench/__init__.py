"""Benchmarks: run the scripts here with the venv's python from the repo root."""
