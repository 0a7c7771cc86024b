"""Where Ray runs: the session, a local multi-node cluster, job submission, and cloud definitions.

Code (imports `preprocessing` only, never `pipelines`; the CLI hands `submit` its parser):
- `session.py`: connect to `RAY_ADDRESS`, or start a private local Ray instance whose processes
  know its address; keep Ray Data's logging off the console.
- `local.py`: `raylift cluster local up/down`, a multi-node Ray cluster on 127.0.0.1.
- `submit.py`: `raylift submit -- CMD`, any raylift command as a Ray job (working dir + pip env).
- `jobs.py`: `raylift jobs ls/logs/stop`.
- `console.py`: raylift's lines on the console, Ray's in its log files (and a job log's filter).
- `logship.py`: copy a run's Ray session logs, from every node, into its run directory.
- `node_types.py`: which GPU node types a KubeRay pod's requests fit (`node_types.yaml`).
- `watchdog.py`: stops a killed driver's private Ray processes.

Definitions (package data, validated by tests/test_cluster_configs.py):
- `aws.yaml`, `gcp.yaml`: Ray cluster launcher configs (`ray up cluster/aws.yaml` from the repo
  root): CPU head, autoscaling 8-GPU worker groups, raylift installed from the working tree.
- `kuberay/raycluster.yaml`: a long-lived KubeRay RayCluster with a GPU worker group, for
  `raylift submit` through a port-forwarded dashboard.
- `kuberay/rayjob-{preprocess,train,tune}.yaml`: one-shot KubeRay RayJobs that create a cluster,
  run one raylift command and delete the cluster.
- `node_types.yaml`: common GPU node types and the CPU and memory a pod can get on each.

See docs/clusters.md ("From laptop to cluster").
"""
