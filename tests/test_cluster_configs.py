"""The shipped cluster definitions work as written (offline checks, < 5 s).

- Launcher YAMLs (cluster/aws.yaml, cluster/gcp.yaml): Ray's own autoscaler schema (shipped inside
  the ray package), then Ray's own default-filling and validation, then raylift's expectations
  (GPU worker groups of 8, spot/preemptible allowed, bounds that fit `max_workers`, raylift
  installed from the synced working tree).
- KubeRay manifests (cluster/kuberay/): the fields KubeRay's CRDs require, checked explicitly
  (the CRD schemas accept misspelt optional fields silently), unknown spec keys rejected, and
  RayJob runtime envs that can work on a cluster (remote working_dir, pip = pyproject minus Ray).
- Every raylift command named in entrypoints, YAML comments and docs/clusters.md is parsed by the
  real CLI parser, the configs it references exist, and its `--set` overrides validate.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = [REPO / "cluster" / "aws.yaml", REPO / "cluster" / "gcp.yaml"]
KUBERAY = sorted((REPO / "cluster" / "kuberay").glob("*.yaml"))
DOCS = REPO / "docs" / "clusters.md"

# -------------------------------------------------------------------------------------------
# Cluster launcher


def ray_schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_yaml_passes_rays_schema_and_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, ray_schema())
    validate_config(prepare_config(config))  # Ray's own checks after filling its defaults


def test_schema_check_catches_a_misspelt_key():
    config = yaml.safe_load(LAUNCHER[0].read_text())
    config["available_node_types"]["head"]["resource"] = {"CPU": 0}  # typo of `resources`
    with pytest.raises(jsonschema.ValidationError, match="resource"):
        jsonschema.validate(config, ray_schema())


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_yaml_has_gpu_workers_bounds_and_installs_raylift(path):
    config = yaml.safe_load(path.read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) == 8}
    assert len(gpu) >= 2, "8-GPU worker groups (A100 and H100 nodes)"
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"], name
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]
    node_configs = json.dumps([t["node_config"] for t in workers.values()])
    assert ("spot" in node_configs) or ('"preemptible": true' in node_configs), "spot workers allowed"
    if config["provider"]["type"] == "aws":
        kinds = {t["node_config"]["InstanceType"].split(".")[0] for t in gpu.values()}
        assert kinds == {"p4d", "p5"}
    # raylift comes from the working tree synced by file_mounts.
    mounts = {remote for remote, local in config["file_mounts"].items() if local == "."}
    assert len(mounts) == 1
    setup = " && ".join(config["setup_commands"])
    assert "pip install -q torch==" in setup
    assert f"pip install -q -e {mounts.pop()}" in setup
    assert {".venv", ".git", "data", "runs"} <= set(config["rsync_exclude"])


# -------------------------------------------------------------------------------------------
# KubeRay

RAYCLUSTER_SPEC_KEYS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
    "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy",
    "gcsFaultToleranceOptions", "upgradeStrategy", "authOptions",
}
RAYJOB_SPEC_KEYS = {
    "entrypoint", "runtimeEnvYAML", "jobId", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished",
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "clusterSelector",
    "submitterPodTemplate", "submitterConfig", "metadata", "suspend", "submissionMode",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "managedBy",
    "deletionStrategy", "schedule",
}
HEAD_GROUP_KEYS = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_GROUP_KEYS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
    "numOfHosts", "scaleStrategy", "suspend", "idleTimeoutSeconds",
}
REMOTE_PACKAGE = ("s3://", "gs://", "https://", "http://", "azure://", "abfss://")


def _unknown(where: str, mapping: dict, allowed: set) -> list[str]:
    return [f"{where}: unknown key {k!r}" for k in mapping if k not in allowed]


def _pod_problems(where: str, template) -> list[str]:
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        return [f"{where}.template.spec: missing"]
    containers = template["spec"].get("containers")
    if not containers:
        return [f"{where}.template.spec.containers: missing or empty"]
    problems = []
    for i, c in enumerate(containers):
        at = f"{where}.template.spec.containers[{i}]"
        if not c.get("name"):
            problems.append(f"{at}.name: missing")
        if not str(c.get("image", "")).startswith("rayproject/ray:2.60"):
            problems.append(f"{at}.image: expected rayproject/ray:2.60.*, got {c.get('image')!r}")
        res = c.get("resources")
        if not isinstance(res, dict) or not res.get("limits"):
            problems.append(f"{at}.resources.limits: missing")
        problems += _unknown(f"{at}.resources", res or {}, {"requests", "limits", "claims"})
    return problems


def raycluster_spec_problems(where: str, spec) -> list[str]:
    """What KubeRay's RayClusterSpec requires, and nothing it would not recognise."""
    if not isinstance(spec, dict):
        return [f"{where}: missing"]
    problems = _unknown(where, spec, RAYCLUSTER_SPEC_KEYS)
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        problems.append(f"{where}.headGroupSpec: missing")
    else:
        problems += _unknown(f"{where}.headGroupSpec", head, HEAD_GROUP_KEYS)
        if not isinstance(head.get("rayStartParams"), dict):
            problems.append(f"{where}.headGroupSpec.rayStartParams: missing")
        problems += _pod_problems(f"{where}.headGroupSpec", head.get("template"))
    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        problems.append(f"{where}.workerGroupSpecs: missing or empty")
        groups = []
    for i, g in enumerate(groups):
        at = f"{where}.workerGroupSpecs[{i}]"
        problems += _unknown(at, g, WORKER_GROUP_KEYS)
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            if key not in g:
                problems.append(f"{at}.{key}: missing")
        counts = [g.get(k) for k in ("minReplicas", "replicas", "maxReplicas")]
        if all(isinstance(n, int) for n in counts) and not counts[0] <= counts[1] <= counts[2]:
            problems.append(f"{at}: expected minReplicas <= replicas <= maxReplicas, got {counts}")
        if not isinstance(g.get("rayStartParams", {}), dict):
            problems.append(f"{at}.rayStartParams: expected a mapping")
        problems += _pod_problems(at, g.get("template"))
    return problems


def kuberay_problems(doc) -> list[str]:
    """Everything wrong with a RayCluster or RayJob manifest (empty list: fine)."""
    if not isinstance(doc, dict):
        return ["manifest: expected a mapping"]
    problems = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion: expected ray.io/v1, got {doc.get('apiVersion')!r}")
    if not (doc.get("metadata") or {}).get("name"):
        problems.append("metadata.name: missing")
    problems += _unknown("manifest", doc, {"apiVersion", "kind", "metadata", "spec"})
    spec = doc.get("spec")
    if doc.get("kind") == "RayCluster":
        return problems + raycluster_spec_problems("spec", spec)
    if doc.get("kind") != "RayJob":
        return problems + [f"kind: expected RayCluster or RayJob, got {doc.get('kind')!r}"]
    if not isinstance(spec, dict):
        return problems + ["spec: missing"]
    problems += _unknown("spec", spec, RAYJOB_SPEC_KEYS)
    if not str(spec.get("entrypoint", "")).strip():
        problems.append("spec.entrypoint: missing")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("spec.shutdownAfterJobFinishes: expected true (delete the cluster afterwards)")
    if "runtimeEnvYAML" in spec:
        env = yaml.safe_load(spec["runtimeEnvYAML"])
        if not isinstance(env, dict):
            problems.append("spec.runtimeEnvYAML: expected a YAML mapping")
        else:
            problems += _unknown("spec.runtimeEnvYAML", env,
                                 {"working_dir", "pip", "env_vars", "py_modules", "excludes", "config"})
    if "clusterSelector" not in spec:
        problems += raycluster_spec_problems("spec.rayClusterSpec", spec.get("rayClusterSpec"))
    return problems


def load_manifest(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: one manifest per file"
    return docs[0]


def test_kuberay_manifests_exist():
    kinds = sorted(load_manifest(p)["kind"] for p in KUBERAY)
    assert kinds == ["RayCluster", "RayJob", "RayJob", "RayJob"]


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_has_the_required_fields(path):
    assert kuberay_problems(load_manifest(path)) == []


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(apiVersion="ray.io/v1alpha1"), "apiVersion"),
    (lambda d: d["spec"].update(shutdownAfterJobFinish=d["spec"].pop("shutdownAfterJobFinishes")),
     "shutdownAfterJobFinish'"),
    (lambda d: d["spec"]["rayClusterSpec"].update(workerGroupSpec=d["spec"]["rayClusterSpec"].pop("workerGroupSpecs")),
     "workerGroupSpec'"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("maxReplicas"), "maxReplicas: missing"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("image"),
     "image"),
    (lambda d: d["spec"].pop("entrypoint"), "entrypoint: missing"),
])
def test_kuberay_check_catches_misspelt_and_missing_fields(mutate, expected):
    doc = load_manifest(REPO / "cluster" / "kuberay" / "rayjob-train.yaml")
    mutate(doc)
    problems = kuberay_problems(doc)
    assert any(expected in p for p in problems), problems


def test_raycluster_has_an_autoscaling_gpu_worker_group():
    doc = load_manifest(REPO / "cluster" / "kuberay" / "raycluster.yaml")
    groups = doc["spec"]["workerGroupSpecs"]
    gpus = [g for g in groups
            if str(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")) == "8"]
    assert gpus and gpus[0]["maxReplicas"] > gpus[0]["minReplicas"]
    assert doc["spec"]["enableInTreeAutoscaling"] is True


@pytest.mark.parametrize("path", [p for p in KUBERAY if p.name.startswith("rayjob")], ids=lambda p: p.name)
def test_rayjob_runtime_env_can_work_on_a_cluster(path):
    from cluster.submit import project_requirements

    env = yaml.safe_load(load_manifest(path)["spec"]["runtimeEnvYAML"])
    # The submitter runs inside Kubernetes: a local working_dir would not exist there.
    assert env["working_dir"].startswith(REMOTE_PACKAGE) and env["working_dir"].endswith(".zip")
    # The same dependencies as pyproject.toml (minus Ray, which the image provides).
    assert env["pip"] == project_requirements(REPO)


# -------------------------------------------------------------------------------------------
# raylift commands named anywhere in the cluster files and docs


def command_lines(text: str) -> list[list[str]]:
    """raylift invocations in `text` as argv lists (after `raylift` / `python -m pipelines.cli`).

    Backslash continuations are joined; leading `#`, `$ ` and VAR=value assignments are dropped;
    `&&`/`;`/`|` chains are split.
    """
    logical, pending = [], ""
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line.startswith("$ "):
            line = line[2:]
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    commands = []
    for line in logical:
        if "raylift " not in line and "pipelines.cli" not in line:
            continue
        try:
            tokens = shlex.split(line, comments=False)
        except ValueError:
            continue
        segment: list[str] = []
        for tok in tokens + ["&&"]:
            if tok not in ("&&", ";", "|", "||"):
                segment.append(tok)
                continue
            while segment and "=" in segment[0] and not segment[0].startswith("-"):
                segment = segment[1:]
            if segment[:1] == ["raylift"]:
                commands.append(segment[1:])
            elif segment[:3] == ["python", "-m", "pipelines.cli"]:
                commands.append(segment[3:])
            segment = []
    return commands


def shell_text(path: Path) -> str:
    """The shell lines of a file: ```bash blocks of Markdown; for YAML, the indented command
    lines of its comments (`#   raylift ...`), RayJob entrypoints and launcher setup commands."""
    text = path.read_text()
    if path.suffix == ".md":
        return "\n".join(re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M))
    lines = [ln.strip()[1:] for ln in text.splitlines()
             if ln.strip().startswith("#") and ln.strip()[1:].startswith("   ")]
    doc = yaml.safe_load(text)
    if doc.get("kind") == "RayJob":
        lines.append(doc["spec"]["entrypoint"])
    lines += doc.get("setup_commands", [])
    return "\n".join(lines)


def named_commands() -> list[tuple[str, list[str]]]:
    return [(p.name, argv) for p in LAUNCHER + KUBERAY + [DOCS] if p.exists()
            for argv in command_lines(shell_text(p))]


def test_command_line_extraction():
    text = "# raylift submit --pip never -- train --config a.yaml \\\n#   --set x=1\n" \
           "RAY_ADDRESS=http://h:1 raylift jobs ls && python -m pipelines.cli evaluate --help\n" \
           "pip install -e . && echo not raylift"
    assert command_lines(text) == [
        ["submit", "--pip", "never", "--", "train", "--config", "a.yaml", "--set", "x=1"],
        ["jobs", "ls"],
        ["evaluate", "--help"],
    ]


def test_docs_and_manifests_name_raylift_commands():
    names = {name for name, _ in named_commands()}
    assert {"clusters.md", "aws.yaml", "gcp.yaml", "raycluster.yaml"} <= names
    assert {"rayjob-preprocess.yaml", "rayjob-train.yaml", "rayjob-tune.yaml"} <= names


@pytest.mark.parametrize("source, argv", named_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_named_command_parses_with_the_real_cli(source, argv):
    from cluster.submit import parse_command
    from pipelines.cli import build_parser, parser_for
    from pipelines.config import load_config

    if "--help" in argv or "-h" in argv:
        return
    args = build_parser(argv[0]).parse_args(argv)
    inner = parse_command(args.job_command, parser_for) if argv[0] == "submit" else argv
    if "--config" in inner:
        config = inner[inner.index("--config") + 1]
        assert (REPO / config).is_file(), f"{source}: {config} does not exist in the repository"
        overrides = [inner[i + 1] for i, tok in enumerate(inner) if tok == "--set"]
        load_config(str(REPO / config), overrides)  # the overrides name real keys with valid values
