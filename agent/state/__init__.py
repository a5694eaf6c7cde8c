"""The state store: one snapshot per source, keyed by object."""
