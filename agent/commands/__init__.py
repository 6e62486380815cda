"""One module per CLI command: the thin shell that wires config, host and core together."""
