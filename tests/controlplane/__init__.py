"""The project's reference control plane: the whole agent API contract over real HTTP on loopback.

    from tests.controlplane import ControlPlane
    with ControlPlane.start(access_ttl=2, limits={"write": 5}) as cp:
        ...  # cp.url, cp.bootstrap_token, cp.admin_api_key, cp.faults, ...

See docs/api.md ("Reference control plane").
"""

from .faults import Faults
from .server import ControlPlane, RequestRecord

__all__ = ["ControlPlane", "Faults", "RequestRecord"]
