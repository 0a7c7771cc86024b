# syntax=docker/dockerfile:1
# raylift's cluster image: Ray 2.60 with CUDA, torch built for the same CUDA, raylift installed.
# The KubeRay manifests (cluster/kuberay/) and the launcher YAMLs (cluster/aws.yaml, gcp.yaml) run
# it, so no job pip-installs gigabytes of wheels at start. Build and push from the repository root:
#   docker build -t my-registry.example.com/raylift:0.1.0-cu128 .
#   docker push my-registry.example.com/raylift:0.1.0-cu128
# Sources: Ray's images are tagged <ray>-py<python>-cu<cuda> (docs.ray.io, "Docker images");
# PyTorch's CUDA wheels live at download.pytorch.org/whl/cu<cuda> (pytorch.org "Get started");
# torchvision 0.28 is the release built against torch 2.13 (the Makefile pins the same pair).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cu128
FROM ${RAY_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCHVISION_VERSION=0.28.0
ARG CUDA_TAG=cu128

# torch and torchvision from PyTorch's index for the base image's CUDA: a plain PyPI install
# could pick a build for another CUDA. In this image torchvision is a normal (with-deps) install.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/${CUDA_TAG} \
        torch==${TORCH_VERSION}+${CUDA_TAG} torchvision==${TORCHVISION_VERSION}+${CUDA_TAG}

WORKDIR /home/ray/raylift
COPY --chown=ray:users . .
# Editable, so `python -m pipelines.cli` and the `raylift` script run this tree, configs included;
# Ray is already in the base image at the version pyproject.toml pins, and pip keeps it.
RUN pip install --no-cache-dir -e ".[azure,gcs,export]" && python -m pipelines.cli --help > /dev/null

# Ray's own entrypoint and user (ray) stay as the base image sets them.
