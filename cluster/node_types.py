"""Which GPU node types a KubeRay pod fits, from the table in cluster/node_types.yaml.

Why: Kubernetes schedules a pod only onto a node whose *allocatable* CPU and memory (the machine's
size less kubelet and system reservations) cover the pod's requests. A request sized from an
instance's nominal vCPUs and memory, or from the largest instance, fits nothing else, and the pod
stays Pending until the RayJob's deadline. The table holds common GPU node types with their
allocatable share; this module parses Kubernetes quantities and answers which types a pod fits
(`fitting_node_types`, `check_pod`). `python -m cluster.node_types` prints the Markdown table of
per-type requests that docs/clusters.md shows ("Pod sizes by node type").
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

TABLE = Path(__file__).resolve().parent / "node_types.yaml"
GIB = 2**30
GPU_RESOURCE = "nvidia.com/gpu"

_SUFFIXES = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
             "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"([+]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?")


def _quantity(value: str | int | float) -> Decimal:
    """A Kubernetes resource quantity ("90", "500m", "900Gi", "680G", "1e3") as an exact number."""
    text = str(value).strip()
    match = _QUANTITY.fullmatch(text)
    try:
        number = Decimal(match.group(1)) if match else None
    except InvalidOperation:
        number = None
    if number is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 90, 500m, 900Gi, 680G)")
    return number * _SUFFIXES[match.group(2) or ""]


def parse_cpu(value: str | int | float) -> float:
    """CPU cores of a quantity: "90" -> 90.0, "500m" -> 0.5."""
    return float(_quantity(value))


def parse_memory(value: str | int | float) -> int:
    """Bytes of a quantity: "900Gi" -> 900 * 2**30, "680G" -> 680 * 10**9, "512Mi" -> 512 * 2**20."""
    return math.ceil(_quantity(value))


@dataclass(frozen=True)
class NodeType:
    """One row of the table. `memory` and `allocatable_memory` are bytes (`listed_memory` the size as the
    provider lists it), CPUs are cores; `pod_cpu` and `pod_memory` are what is left for one pod after
    the table's DaemonSet headroom."""

    name: str
    cloud: str
    instance_type: str
    gpus: int
    gpu: str
    vcpus: int
    memory: int
    listed_memory: str
    max_pods: int | None
    allocatable_cpu: float
    allocatable_memory: int
    pod_cpu: float
    pod_memory: int

    def fits(self, cpu: float, memory: int, gpus: int) -> bool:
        return gpus <= self.gpus and cpu <= self.pod_cpu and memory <= self.pod_memory

    @property
    def request(self) -> tuple[int, int]:
        """The largest whole-core CPU and whole-GiB memory request (GiB) that fits this type."""
        return math.floor(self.pod_cpu), self.pod_memory // GIB


def load_node_types(path: Path = TABLE) -> list[NodeType]:
    """The table's node types, in its order."""
    table = yaml.safe_load(path.read_text())
    headroom = table["daemonset_headroom"]
    rows = []
    for row in table["node_types"]:
        cpu, memory = parse_cpu(row["allocatable"]["cpu"]), parse_memory(row["allocatable"]["memory"])
        rows.append(NodeType(
            name=row["name"], cloud=row["cloud"], instance_type=row["instance_type"], gpus=row["gpus"],
            gpu=row["gpu"], vcpus=row["vcpus"], memory=parse_memory(row["memory"]),
            listed_memory=str(row["memory"]), max_pods=row.get("max_pods"),
            allocatable_cpu=cpu, allocatable_memory=memory,
            pod_cpu=cpu - parse_cpu(headroom["cpu"]), pod_memory=memory - parse_memory(headroom["memory"])))
    return rows


def fitting_node_types(requests: dict[str, Any], gpus: int, node_types: list[NodeType] | None = None) -> list[str]:
    """Names of the node types with at least `gpus` GPUs whose allocatable CPU and memory (less the
    DaemonSet headroom) cover `requests` ({"cpu": "90", "memory": "900Gi"})."""
    cpu, memory = parse_cpu(requests.get("cpu", 0)), parse_memory(requests.get("memory", 0))
    return [n.name for n in node_types or load_node_types() if n.fits(cpu, memory, gpus)]


def pod_requests(pod: dict[str, Any]) -> dict[str, float]:
    """A pod spec's effective requests as the scheduler counts them: {"cpu": cores, "memory": bytes,
    "gpus": n}. The containers' sum, or the largest init container where that is more; a resource
    with a limit and no request requests its limit."""
    def totals(containers: list[dict[str, Any]]) -> list[dict[str, float]]:
        out = []
        for c in containers:
            resources = c.get("resources", {})
            asked = {**resources.get("limits", {}), **resources.get("requests", {})}
            out.append({"cpu": parse_cpu(asked.get("cpu", 0)), "memory": parse_memory(asked.get("memory", 0)),
                        "gpus": int(parse_cpu(asked.get(GPU_RESOURCE, 0)))})
        return out

    main, init = totals(pod["containers"]), totals(pod.get("initContainers", []))
    return {key: max([sum(c[key] for c in main)] + [c[key] for c in init]) for key in ("cpu", "memory", "gpus")}


def check_pod(where: str, pod: dict[str, Any], node_types: list[NodeType] | None = None) -> list[str]:
    """The node types a pod spec fits; ValueError naming `where` (manifest and group) and every node
    type, with what a pod may request on it, when it fits none."""
    nodes = node_types or load_node_types()
    asked = pod_requests(pod)
    fits = [n.name for n in nodes if n.fits(asked["cpu"], int(asked["memory"]), int(asked["gpus"]))]
    if not fits:
        sizes = "; ".join(f"{n.name} ({n.gpus}x {n.gpu}): cpu {n.request[0]}, memory {n.request[1]}Gi"
                          for n in nodes)
        raise ValueError(
            f"{where}: requests cpu {asked['cpu']:g}, memory {asked['memory'] / GIB:g}Gi, {int(asked['gpus'])} GPUs, "
            f"which fit no node type of {TABLE.name} (the pod would stay Pending). Largest requests per type: {sizes}")
    return fits


def docs_table(node_types: list[NodeType] | None = None) -> str:
    """The Markdown table of docs/clusters.md, "Pod sizes by node type"."""
    lines = ["| node type | GPUs | vCPUs / memory | allocatable cpu / memory | request cpu / memory |",
             "|---|---|---|---|---|"]
    for n in node_types or load_node_types():
        cpu, memory = n.request
        lines.append(f"| `{n.name}` | {n.gpus}× {n.gpu} | {n.vcpus} / {n.listed_memory} | "
                     f"{n.allocatable_cpu:g} / {n.allocatable_memory / GIB:.1f} GiB | `{cpu}` / `{memory}Gi` |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(docs_table())
