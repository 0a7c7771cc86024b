"""pyproject.toml's metadata installs cleanly: no setuptools warnings, nothing left out of a wheel.

setuptools warns (and will fail from 2027) on a `project.license` table, and warns when a folder
with files a package needs (cluster/kuberay's manifests) is not a listed package. A package
missing from `packages` is silently left out of a non-editable install.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP = ("pipelines", "models", "preprocessing", "cluster")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression():
    project = pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert "License ::" not in " ".join(project.get("classifiers", []))  # PEP 639: not both


def test_every_folder_that_ships_files_is_a_listed_package():
    setuptools = pyproject()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    shipped = {str(d.relative_to(REPO)).replace("/", ".") for top in TOP
               for d in [REPO / top, *(REPO / top).rglob("*")]
               if d.is_dir() and d.name != "__pycache__" and any(f.is_file() for f in d.iterdir())}
    assert shipped == listed
    data = setuptools["package-data"]
    for package, patterns in data.items():
        folder = REPO / package.replace(".", "/")
        assert all(list(folder.glob(p)) for p in patterns), (package, patterns)
    assert "kuberay/*.yaml" not in " ".join(data.get("cluster", []))  # data of cluster.kuberay, not cluster


def test_progress_bars_have_their_dependency():
    deps = " ".join(pyproject()["project"]["dependencies"])
    assert "tqdm" in deps
