"""Sinks turn the desired table into files and reloads."""
