"""sshklm-agent: the host-side agent of SSH key lifecycle management."""

__version__ = "0.1.0"
