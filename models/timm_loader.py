"""Import `timm` on a CPU-only torch: the one place raylift touches torchvision's quirks.

timm imports torchvision (for `FrozenBatchNorm2d`) even for a plain Swin Transformer. PyPI's
torchvision wheels are CUDA builds, so next to the CPU torch wheel their C extension cannot load
(`libtorch_cuda.so` is missing). torchvision copes with that everywhere but one place:
`torchvision/_meta_registrations.py` registers fake kernels for `torchvision::nms` and
`torchvision::qnms` without checking that the extension loaded, and the import fails with
"operator torchvision::nms does not exist". Only on that failure are the two schemas declared and
the import retried: the rest of torchvision then imports, the detection ops stay unavailable, and
raylift never calls them. Where torchvision imports (a CUDA torch with its matching torchvision),
nothing is declared.
"""
from __future__ import annotations

import sys
from types import ModuleType

import torch

_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_declared: list[torch.library.Library] = []  # keeps the declarations alive for the process


def _import_torchvision() -> None:
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "torchvision::" not in str(e) or _declared:
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # the half-initialised package from the failed import
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _TORCHVISION_SCHEMAS:
            lib.define(schema)
        _declared.append(lib)
        import torchvision  # noqa: F401,F811


def import_timm() -> ModuleType:
    """`import timm`, first making torchvision importable next to a CPU-only torch."""
    _import_torchvision()
    import timm

    return timm
