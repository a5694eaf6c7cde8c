"""The record model shared by every stage: names, addresses, provenance."""
