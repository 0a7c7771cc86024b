"""The shipped cluster definitions work as written (offline checks, < 5 s).

- Launcher YAMLs (cluster/aws.yaml, cluster/gcp.yaml): Ray's own autoscaler schema (shipped inside
  the ray package), then Ray's own default-filling and validation, then raylift's expectations
  (GPU worker groups of 8, spot/preemptible allowed, bounds that fit `max_workers`, the raylift
  image with the synced working tree linked in).
- KubeRay manifests (cluster/kuberay/): KubeRay's real RayCluster/RayJob CRD schemas of the
  minimum (v1.2.0) and newest (v1.7.0) releases, unknown fields rejected; the raylift image and a
  /dev/shm volume in every pod; no per-job pip installs.
- The Dockerfile: parsed, base image and torch build agree on CUDA; built where docker exists.
- AWS: every worker node type has an instance profile, and the policies it needs are shipped.
- GCP: every node type names a service account with the cloud-platform scope (workers: raylift-worker,
  whose one-time setup docs/clusters.md gives in a working order).
- KubeRay pod sizes: every GPU pod's requests fit a node type of cluster/node_types.yaml (an
  8-GPU pod every 8-GPU type), whose allocatable numbers follow the stated reservation rules, and
  docs/clusters.md's "Pod sizes by node type" table is the one cluster/node_types.py prints.
- Every raylift command named in entrypoints, YAML comments and docs/clusters.md is parsed by the
  real CLI parser, the configs it references exist, and its `--set` overrides validate.
"""
from __future__ import annotations

import gzip
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from cluster.node_types import GIB, check_pod, docs_table, fitting_node_types, load_node_types, parse_cpu, \
    parse_memory, pod_requests

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = [REPO / "cluster" / "aws.yaml", REPO / "cluster" / "gcp.yaml"]
NODE_TYPES = REPO / "cluster" / "node_types.yaml"
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
    # The raylift image, and raylift's code from the working tree synced by file_mounts.
    assert config["docker"]["image"] == "my-registry.example.com/raylift:0.1.0-cu128"
    assert not config["docker"].get("disable_shm_size_detection"), "Ray sizes /dev/shm itself"
    mounts = {remote for remote, local in config["file_mounts"].items() if local == "."}
    assert len(mounts) == 1
    assert config["setup_commands"] == [f"pip install -q --no-deps -e {mounts.pop()}"]  # no wheels
    assert {".venv", ".git", "data", "runs"} <= set(config["rsync_exclude"])


# The host images the GPU node types boot. The container (Dockerfile: Ray's cu128 image, torch cu128)
# needs an NVIDIA driver >= 570 on the host, which these two publisher-maintained pointers carry: AWS's
# public SSM parameter for the Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) and Google's
# Deep Learning VM family for CUDA 12.8 / driver 570. They are pinned as these pointers, not as an
# ami-... id or a dated image name, on purpose: AMI ids differ per region and the publishers retire old
# images, so a hard-coded id goes stale or is missing in the user's region; the pointer always names
# the publisher's current image of exactly this line. The sources are cited in the YAMLs' comments.
GPU_HOST_IMAGE = {
    "aws": ("ImageId", "resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
                       "base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"),
    "gcp": ("sourceImage", "projects/deeplearning-platform-release/global/images/family/"
                           "common-cu128-ubuntu-2204-nvidia-570"),
}


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_every_gpu_node_type_pins_a_host_image_with_a_driver_for_cuda_12_8(path):
    config = yaml.safe_load(path.read_text())
    key, expected = GPU_HOST_IMAGE[config["provider"]["type"]]
    gpu = {name: t for name, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}
    assert gpu, f"{path.name}: no GPU node types"
    for name, t in gpu.items():
        node = t["node_config"]
        if key == "ImageId":
            found = node.get("ImageId")
        else:
            boot = [d for d in node.get("disks", []) if d.get("boot")]
            assert len(boot) == 1, f"{path.name}: available_node_types.{name}.node_config.disks has no boot disk"
            found = boot[0].get("initializeParams", {}).get("sourceImage")
        assert found == expected, f"{path.name}: available_node_types.{name}.node_config {key} is {found!r}"
    assert "cu124" not in path.read_text(), f"{path.name} still names a CUDA 12.4 image"
    if key == "ImageId":  # without one, Ray 2.60 boots its Ubuntu 18.04 DLAMI, head and CPU types too
        unpinned = [n for n, t in config["available_node_types"].items() if t["node_config"].get("ImageId") != expected]
        assert unpinned == [], f"{path.name}: node types without the pinned ImageId: {unpinned}"


def test_aws_workers_get_an_instance_profile_and_the_documented_policies():
    config = yaml.safe_load(LAUNCHER[0].read_text())
    workers = {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}
    profiles = {n: t["node_config"].get("IamInstanceProfile") for n, t in workers.items()}
    assert profiles == {n: {"Name": "raylift-worker"} for n in workers}, profiles
    worker = json.loads((REPO / "cluster" / "aws-worker-policy.json").read_text())
    allowed = {(a, r) for s in worker["Statement"] if s["Effect"] == "Allow"
               for a in s["Action"] for r in [s["Resource"]]}
    bucket = "arn:aws:s3:::my-raylift-bucket"
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert (action, f"{bucket}/*") in allowed  # shards, checkpoints, results
    assert ("s3:ListBucket", bucket) in allowed  # listing runs and datasets
    head = json.loads((REPO / "cluster" / "aws-head-passrole-policy.json").read_text())
    assert head["Statement"][0]["Action"] == "iam:PassRole"
    assert head["Statement"][0]["Resource"].endswith(":role/raylift-worker")
    docs = DOCS.read_text()
    assert "cluster/aws-worker-policy.json" in docs and "cluster/aws-head-passrole-policy.json" in docs


# The GCP launcher, like AWS's, gives its service account (Ray's default, created by `ray up`) to the head
# only (ray-project/ray#27915): workers that read gs:// data, write checkpoints and take leases need
# their own, the raylift-worker account of docs/clusters.md "GCP permissions".
GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def ray_gcp_head_account() -> str:
    """The account id Ray's GCP launcher creates and gives the head (`DEFAULT_SERVICE_ACCOUNT_ID`), read
    from its source: importing that module needs the Google API client, which only the head installs."""
    import ray

    source = (Path(ray.__file__).parent / "autoscaler" / "_private" / "gcp" / "config.py").read_text()
    assert 'DEFAULT_SERVICE_ACCOUNT_ID = RAY + "-sa-" + VERSION' in source
    names = dict(re.findall(r'^(RAY|VERSION) = "([^"]+)"', source, flags=re.M))
    return f"{names['RAY']}-sa-{names['VERSION']}"


def test_gcp_every_node_type_has_a_service_account_and_workers_the_raylift_worker_one():
    config = yaml.safe_load(LAUNCHER[1].read_text())
    # provider.project_id stays null until the user sets it (Ray then stops with a clear error); the
    # emails carry the placeholder PROJECT_ID until then, and the same project afterwards.
    project = config["provider"]["project_id"] or "PROJECT_ID"
    for name, t in config["available_node_types"].items():
        accounts = t["node_config"].get("serviceAccounts")
        assert accounts and len(accounts) == 1, f"gcp.yaml: available_node_types.{name}.node_config.serviceAccounts"
        assert GCP_SCOPE in accounts[0]["scopes"], f"gcp.yaml: {name}: {accounts[0]}"
        account = ray_gcp_head_account() if name == config["head_node_type"] else "raylift-worker"
        assert accounts[0]["email"] == f"{account}@{project}.iam.gserviceaccount.com", f"gcp.yaml: {name}"


def logical_lines(block: str) -> list[str]:
    """A shell block's commands, backslash continuations joined."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_docs_gcp_setup_creates_the_accounts_before_binding_them():
    text = DOCS.read_text()
    assert text.index("#### AWS permissions") < text.index("#### GCP permissions") < text.index("### The raylift image")
    section = re.split(r"^#{2,4} ", text.split("#### GCP permissions", 1)[1], flags=re.M)[0]
    assert "before `ray up`" in section
    commands = logical_lines("\n".join(re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M)))

    def first(*words: str) -> int:
        found = [i for i, c in enumerate(commands) if all(w in c for w in words)]
        assert found, f"docs/clusters.md GCP permissions: no command with {words}"
        return found[0]

    worker = "raylift-worker@PROJECT_ID.iam.gserviceaccount.com"
    head = f"{ray_gcp_head_account()}@PROJECT_ID.iam.gserviceaccount.com"
    create_worker = first("gcloud iam service-accounts create raylift-worker")
    create_head = first("gcloud iam service-accounts create", ray_gcp_head_account())
    bucket = first("gcloud storage buckets add-iam-policy-binding gs://my-raylift-bucket",
                   f"serviceAccount:{worker}", "roles/storage.objectAdmin")
    act_as = first(f"gcloud iam service-accounts add-iam-policy-binding {worker}",
                   f"serviceAccount:{head}", "roles/iam.serviceAccountUser")
    assert create_worker < bucket and max(create_worker, create_head) < act_as


# -------------------------------------------------------------------------------------------
# KubeRay: the real CRD schemas (tests/data/kuberay/<tag>/<Kind>.json.gz, vendored by vendor.py)

KUBERAY_MIN = "v1.2.0"  # RayJob.spec.backoffLimit first appears in v1.2.0
KUBERAY_NEWEST = "v1.7.0"
KUBERAY_BELOW_MIN = "v1.1.1"
CRD_DIR = REPO / "tests" / "data" / "kuberay"
IMAGE = "my-registry.example.com/raylift:0.1.0-cu128"


def strict(schema):
    """The CRD schema as `kubectl apply --validate=strict` applies it: an object that lists its
    `properties` rejects any other field, unless it preserves unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_schema(tag: str, kind: str) -> dict:
    path = CRD_DIR / tag / f"{kind}.json.gz"
    return strict(json.loads(gzip.decompress(path.read_bytes())))


def crd_problems(doc: dict, tag: str) -> list[str]:
    """Every violation of KubeRay `tag`'s schema for the manifest's kind, as 'path: message'."""
    validator = jsonschema.Draft7Validator(crd_schema(tag, doc["kind"]))
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc))


def load_manifest(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: one manifest per file"
    return docs[0]


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of every Ray pod a manifest creates."""
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return pods


def test_kuberay_manifests_exist():
    kinds = sorted(load_manifest(p)["kind"] for p in KUBERAY)
    assert kinds == ["RayCluster", "RayJob", "RayJob", "RayJob"]


@pytest.mark.parametrize("tag", [KUBERAY_MIN, KUBERAY_NEWEST])
@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_passes_the_real_crd_schema(path, tag):
    assert crd_problems(load_manifest(path), tag) == []


def test_the_stated_minimum_is_the_minimum():
    """One release below the minimum rejects the RayJobs (`backoffLimit`), and the docs state it."""
    problems = [p for path in KUBERAY if path.name.startswith("rayjob")
                for p in crd_problems(load_manifest(path), KUBERAY_BELOW_MIN)]
    assert problems and all("backoffLimit" in p for p in problems), problems
    assert f"KubeRay operator **{KUBERAY_MIN} or later**" in DOCS.read_text()


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["spec"].update(shutdownAfterJobFinish=d["spec"].pop("shutdownAfterJobFinishes")),
     "'shutdownAfterJobFinish' was unexpected"),
    (lambda d: d["spec"]["rayClusterSpec"].update(workerGroupSpec=d["spec"]["rayClusterSpec"].pop("workerGroupSpecs")),
     "'workerGroupSpec' was unexpected"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
     .update(volumeMount=[]), "'volumeMount' was unexpected"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"].pop("template"), "'template' is a required property"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas="2"), "'2' is not of type 'integer'"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("name"),
     "'name' is a required property"),
])
@pytest.mark.parametrize("tag", [KUBERAY_MIN, KUBERAY_NEWEST])
def test_crd_check_catches_misspelt_missing_and_mistyped_fields(tag, mutate, expected):
    doc = load_manifest(REPO / "cluster" / "kuberay" / "rayjob-train.yaml")
    mutate(doc)
    assert any(expected in p for p in crd_problems(doc, tag)), crd_problems(doc, tag)


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_every_ray_pod_runs_the_raylift_image_with_a_dev_shm_volume(path):
    doc = load_manifest(path)
    for where, pod in pod_templates(doc):
        memory_volumes = {v["name"] for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"}
        for c in pod["containers"]:
            assert c["image"] == IMAGE, f"{path.name} {where}: {c['image']}"
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert mounts.get("/dev/shm") in memory_volumes, f"{path.name} {where}: no memory-backed /dev/shm"


@pytest.mark.parametrize("path", [p for p in KUBERAY if p.name.startswith("rayjob")], ids=lambda p: p.name)
def test_rayjob_runs_the_image_without_per_job_installs(path):
    spec = load_manifest(path)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
    assert not {"pip", "uv", "conda", "working_dir"} & set(env), env  # the code and deps are the image's
    assert spec["entrypoint"].startswith("cd /home/ray/raylift && python -m pipelines.cli ")


def test_raycluster_has_an_autoscaling_gpu_worker_group():
    doc = load_manifest(REPO / "cluster" / "kuberay" / "raycluster.yaml")
    groups = doc["spec"]["workerGroupSpecs"]
    gpus = [g for g in groups
            if str(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")) == "8"]
    assert gpus and gpus[0]["maxReplicas"] > gpus[0]["minReplicas"]
    assert doc["spec"]["enableInTreeAutoscaling"] is True


# -------------------------------------------------------------------------------------------
# KubeRay pod sizes: requests that fit the GPU nodes they are meant for (cluster/node_types.py)


def gpu_pods() -> list[tuple[str, dict, dict]]:
    """(manifest and group, rayStartParams, pod spec) of every pod that asks for GPUs."""
    found = []
    for path in KUBERAY:
        doc = load_manifest(path)
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        for group in spec["workerGroupSpecs"]:
            pod = group["template"]["spec"]
            if pod_requests(pod)["gpus"]:
                found.append((f"{path.name} {group['groupName']}", group.get("rayStartParams", {}), pod))
    return found


def test_manifests_have_gpu_pods():
    assert {where.split()[0] for where, _, _ in gpu_pods()} == {"raycluster.yaml", "rayjob-train.yaml", "rayjob-tune.yaml"}


@pytest.mark.parametrize("where, params, pod", gpu_pods(), ids=[where for where, _, _ in gpu_pods()])
def test_every_gpu_pod_fits_a_node_type_and_an_8_gpu_pod_every_8_gpu_type(where, params, pod):
    fits = check_pod(where, pod)  # raises when it fits no node type
    requests = pod_requests(pod)
    eights = [n.name for n in load_node_types() if n.gpus == 8]
    if requests["gpus"] == 8:
        assert set(eights) <= set(fits), f"{where}: stays Pending on {sorted(set(eights) - set(fits))}"
    # Ray's CPU count: num-cpus if set, else KubeRay's default, the container's CPU limit (then request).
    container = pod["containers"][0]["resources"]
    ray_cpus = params.get("num-cpus", container.get("limits", {}).get("cpu", container["requests"]["cpu"]))
    assert parse_cpu(ray_cpus) == requests["cpu"], f"{where}: Ray sees {ray_cpus} CPUs, the pod requests {requests['cpu']}"
    assert parse_memory(container["limits"]["memory"]) == requests["memory"], f"{where}: memory limit != request"


def test_oversized_requests_are_rejected():
    # The old 8-GPU request fits only the types with >= 1 TiB of memory: Pending on an a2-highgpu-8g.
    old = fitting_node_types({"cpu": "90", "memory": "900Gi"}, gpus=8)
    assert old == ["eks/p4d.24xlarge", "eks/p5.48xlarge", "gke/a3-highgpu-8g"]
    assert {"eks/p4d.24xlarge", "gke/a2-highgpu-8g"} <= set(fitting_node_types({"cpu": "94", "memory": "564Gi"}, gpus=8))
    assert fitting_node_types({"cpu": "95", "memory": "564Gi"}, gpus=8) == ["eks/p5.48xlarge", "gke/a3-highgpu-8g"]
    assert fitting_node_types({"cpu": "500m", "memory": "512Mi"}, gpus=16) == []  # no 16-GPU node type
    pod = {"containers": [{"name": "ray-worker", "resources": {
        "requests": {"cpu": "500", "memory": "900Gi", "nvidia.com/gpu": "8"},
        "limits": {"cpu": "500", "memory": "900Gi", "nvidia.com/gpu": "8"}}}]}
    with pytest.raises(ValueError) as error:
        check_pod("rayjob-train.yaml gpu-a100x8", pod)
    message = str(error.value)
    assert "rayjob-train.yaml gpu-a100x8" in message and "cpu 500" in message
    assert all(n.name in message for n in load_node_types()), message


@pytest.mark.parametrize("quantity, cores", [("90", 90), (94, 94), ("500m", 0.5), ("95690m", 95.69), ("1.5", 1.5)])
def test_parse_cpu(quantity, cores):
    assert parse_cpu(quantity) == pytest.approx(cores)


@pytest.mark.parametrize("quantity, size", [("900Gi", 900 * GIB), ("680G", 680 * 10**9), ("512Mi", 512 * 2**20),
                                            ("1Ti", 1024 * GIB), ("128974848", 128974848), ("1e3", 1000)])
def test_parse_memory(quantity, size):
    assert parse_memory(quantity) == size


@pytest.mark.parametrize("bad", ["90 Gi", "lots", "-1Gi", ""])
def test_parse_rejects_what_kubernetes_rejects(bad):
    with pytest.raises(ValueError, match="quantity"):
        parse_memory(bad)


# The reservation rules node_types.yaml states, recomputed from each type's size: the providers'
# kube-reserved formulas, kubelet's 100Mi hard-eviction threshold, Karpenter's 7.5% VM overhead.
def reserved_millicores(vcpus: int) -> int:
    """GKE and EKS alike: 6% of the first core, 1% of the second, 0.5% of cores 3-4, 0.25% above."""
    milli, reserved = vcpus * 1000, 0
    for low, high, basis_points in [(0, 1000, 600), (1000, 2000, 100), (2000, 4000, 50), (4000, milli, 25)]:
        reserved += max(0, min(milli, high) - low) * basis_points // 10000
    return reserved


def reserved_memory(node) -> float:
    """Bytes: EKS 11 MiB per pod of the AMI's max pods + 255 MiB; GKE 25% of the first 4 GiB, 20% of
    the next 4, 10% of the next 8, 6% of the next 112, 2% above 128 GiB."""
    if node.cloud == "aws":
        return (11 * node.max_pods + 255) * 2**20
    gib = node.memory / GIB
    tiers = [(0, 4, 0.25), (4, 8, 0.20), (8, 16, 0.10), (16, 128, 0.06), (128, gib, 0.02)]
    return sum(max(0.0, min(gib, high) - low) * share for low, high, share in tiers) * GIB


def test_node_type_table_follows_its_reservation_rules():
    nodes = load_node_types()
    required = {"eks/p4d.24xlarge": (8, 96, 1152 * GIB), "eks/p5.48xlarge": (8, 192, 2048 * GIB),
                "eks/g6.12xlarge": (4, 48, 192 * GIB), "eks/g5.xlarge": (1, 4, 16 * GIB),
                "eks/g5.12xlarge": (4, 48, 192 * GIB), "gke/a2-highgpu-8g": (8, 96, 680 * 10**9),
                "gke/a3-highgpu-8g": (8, 208, 1872 * 10**9), "gke/g2-standard-48": (4, 48, 192 * 10**9),
                "gke/g2-standard-8": (1, 8, 32 * 10**9)}
    assert {n.name: (n.gpus, n.vcpus, n.memory) for n in nodes if n.name in required} == required
    for n in nodes:
        assert n.allocatable_cpu == (n.vcpus * 1000 - reserved_millicores(n.vcpus)) / 1000, n.name
        expected = (n.memory * (1 - 0.075) - reserved_memory(n) - 100 * 2**20) // 2**20 * 2**20
        assert n.allocatable_memory == expected, f"{n.name}: {n.allocatable_memory / GIB:.2f} GiB"


def test_docs_pod_size_table_is_the_node_type_tables():
    text = DOCS.read_text()
    section = text.split("### 5. Kubernetes (KubeRay)", 1)[1]
    assert "Pod sizes by node type" in section
    assert docs_table() in section, "regenerate it with `python -m cluster.node_types`"


# -------------------------------------------------------------------------------------------
# The image


def dockerfile():
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    return parser


def test_dockerfile_parses_and_pins_torch_to_the_base_images_cuda():
    parser = dockerfile()
    instructions = [i["instruction"] for i in parser.structure if i["instruction"] != "COMMENT"]
    assert instructions[:2] == ["ARG", "FROM"] and "COPY" in instructions and instructions.count("FROM") == 1
    args = dict(i["value"].split("=", 1) for i in parser.structure if i["instruction"] == "ARG")  # defaults
    base = args["RAY_IMAGE"]
    assert parser.baseimage in (base, "${RAY_IMAGE}")
    assert re.fullmatch(r"rayproject/ray:2\.60\.\d+-py311-cu\d+", base), base
    cuda = base.rsplit("-", 1)[1]
    assert args["CUDA_TAG"] == cuda  # torch's wheel index and local version match the base's CUDA
    install = " ".join(i["value"] for i in parser.structure if i["instruction"] == "RUN" and "torch==" in i["value"])
    assert f"download.pytorch.org/whl/${{CUDA_TAG}}" in install
    assert "torch==${TORCH_VERSION}+${CUDA_TAG}" in install and "torchvision==${TORCHVISION_VERSION}+${CUDA_TAG}" in install
    # The same torch/torchvision pair as the Makefile's CPU install.
    makefile = (REPO / "Makefile").read_text()
    assert f"torch=={args['TORCH_VERSION']}" in makefile and f"torchvision=={args['TORCHVISION_VERSION']}" in makefile
    # The image name everywhere says which CUDA it carries.
    assert IMAGE.endswith(f"-{cuda}")


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", ".git", "data", "runs"} <= ignored


@pytest.mark.slow
def test_dockerfile_builds_where_a_builder_exists(tmp_path):
    import shutil
    import subprocess

    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.skip("no docker builder on this machine")
    subprocess.run([docker, "build", "-q", "-t", "raylift-test:ci", str(REPO)], check=True, timeout=3600)


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
    from cluster.submit import check_locations, command_locations, parse_command
    from pipelines.cli import build_parser, parser_for
    from pipelines.config import load_config

    if "--help" in argv or "-h" in argv:
        return
    argv = [tok.replace("$PWD", str(REPO)) for tok in argv]
    args = build_parser(argv[0]).parse_args(argv)
    if argv[0] == "submit":
        # Issue 23 defect 1: every documented submission passes submit's own location check (the
        # VM flow's preprocess used to send the configs' relative data/h36m sources, which are
        # not uploaded, and its outputs to relative paths inside the job's temporary copy).
        inner, namespace = parse_command(args.job_command, parser_for)
        check_locations(command_locations(namespace, REPO), REPO)
    else:
        inner = argv
    if "--config" in inner:
        config = inner[inner.index("--config") + 1]
        assert (REPO / config).is_file(), f"{source}: {config} does not exist in the repository"
        overrides = [inner[i + 1] for i, tok in enumerate(inner) if tok == "--set"]
        load_config(str(REPO / config), overrides)  # the overrides name real keys with valid values
