"""Fixtures shared across test files."""

# The applier's fixtures (host, signer, applier); a test file's own fixture of the same name wins.
pytest_plugins = ["tests.integration.apply_support"]
