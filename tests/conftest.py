"""Fixtures shared across test files."""

# The applier's fixtures (host, signer, applier) and the daemon's (fr, agents); a test file's own
# fixture of the same name wins.
pytest_plugins = ["tests.integration.apply_support", "tests.integration.daemon_support"]
