"""Cluster definitions shipped with raylift (package data, validated by tests/test_cluster_configs.py).

- `aws.yaml`, `gcp.yaml`: Ray cluster launcher configs (`ray up cluster/aws.yaml` from the repo
  root): CPU head, autoscaling 8-GPU worker groups, raylift installed from the working tree.
- `kuberay/raycluster.yaml`: a long-lived KubeRay RayCluster with a GPU worker group, for
  `raylift submit` through a port-forwarded dashboard.
- `kuberay/rayjob-{preprocess,train,tune}.yaml`: one-shot KubeRay RayJobs that create a cluster,
  run one raylift command and delete the cluster.

See docs/clusters.md ("From laptop to cluster").
"""
