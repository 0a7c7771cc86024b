"""Connecting to Ray, or starting a private local instance whose processes know its address.

Ray Train's detached `PlacementGroupCleaner` (and anything else using Ray's state API inside the
cluster) finds the cluster by auto-detection when `RAY_ADDRESS` is unset. With more than one Ray
instance on a machine it fails ("Found multiple active Ray instances"), so the placement group of
a Train run that ended ungracefully (a Tune trial stopped by ASHA) is never released and later
trials wait forever for its CPUs. A private instance is therefore started on a chosen GCS port with
`RAY_ADDRESS` set in the environment its processes inherit; the caller's own environment is
restored afterwards, so a later `ray.init` in this process is not pointed at a dead cluster.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Optional


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def init_ray(address: Optional[str] = None, **kwargs: Any) -> None:
    """Connect to `address` (or `RAY_ADDRESS`), else start a private local Ray instance."""
    import ray
    from ray.util import get_node_ip_address

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
        return
    port = _free_port()
    pinned = {"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"{get_node_ip_address()}:{port}"}
    saved = {key: os.environ.get(key) for key in pinned}
    os.environ.update(pinned)
    try:
        ray.init(address="local", **kwargs)  # "local": never attach to another process's cluster
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def quiet_ray_data() -> None:
    """Keep Ray's own lines off the default console (raylift prints its own progress); see
    `cluster.console`. Call before `init_ray`, so Ray's start-up INFO lines are quiet too."""
    from cluster.console import quiet_ray

    quiet_ray()
