"""Regenerate the vendored KubeRay CRD schemas (test data for tests/test_cluster_configs.py).

Source: github.com/ray-project/kuberay, ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs}.yaml
at a release tag. Only each CRD's `ray.io/v1` openAPIV3Schema is kept, with `description` texts
dropped (they are ~70% of the bytes and no test reads them), as gzip-compressed JSON:
`<tag>/<kind>.json.gz`.

    python tests/data/kuberay/vendor.py GIT_DIR v1.2.0 v1.7.0   # GIT_DIR: a kuberay clone's .git
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import yaml

CRDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}


def strip_descriptions(node):
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def v1_schema(crd_yaml: str) -> dict:
    crd = yaml.safe_load(crd_yaml)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return strip_descriptions(version["schema"]["openAPIV3Schema"])


def main(git_dir: str, *tags: str) -> None:
    here = Path(__file__).resolve().parent
    for tag in tags:
        for kind, name in CRDS.items():
            text = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{tag}:ray-operator/config/crd/bases/{name}"],
                                  check=True, capture_output=True, text=True).stdout
            out = here / tag / f"{kind}.json.gz"
            out.parent.mkdir(exist_ok=True)
            data = json.dumps(v1_schema(text), sort_keys=True, separators=(",", ":")).encode()
            out.write_bytes(gzip.compress(data, mtime=0))
            print(f"{out.relative_to(here)}: {len(data)} bytes -> {out.stat().st_size} gzip")


if __name__ == "__main__":
    main(*sys.argv[1:])
