"""Man pages and shell completion, generated from the parsers and the config schema."""
