"""Sources observe the world and publish per-object records into the state store."""
