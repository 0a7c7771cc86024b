"""Import `timm` on a CPU-only torch: the one place raylift touches torchvision's quirks.

timm imports torchvision (for `FrozenBatchNorm2d`) even for a plain Swin Transformer. PyPI's
torchvision wheels are CUDA builds, so next to the CPU torch wheel their C extension cannot load
(`libtorch_cuda.so` is missing). torchvision copes with that everywhere but one place:
`torchvision/_meta_registrations.py` registers fake kernels for `torchvision::nms` and
`torchvision::qnms` without checking that the extension loaded, and the import fails with
"operator torchvision::nms does not exist". Declaring those two schemas first lets the rest of
torchvision import; the detection ops stay unavailable, and raylift never calls them. Where the
extension loads (a CUDA torch with its matching torchvision), nothing is declared.
"""
from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch

_TORCHVISION_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_declared: list[torch.library.Library] = []  # keeps the declarations alive for the process


def _torchvision_extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: timm's own ImportError says what is missing
    folder = list(spec.submodule_search_locations)[0]
    for name in os.listdir(folder):
        if name.startswith("_C.") and name.endswith((".so", ".pyd")):
            try:
                torch.ops.load_library(os.path.join(folder, name))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def import_timm() -> ModuleType:
    """`import timm`, declaring the two torchvision op schemas first when its extension can't load."""
    if not _declared and not hasattr(torch.ops.torchvision, "nms") and not _torchvision_extension_loads():
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _TORCHVISION_SCHEMAS.values():
            lib.define(schema)
        _declared.append(lib)
    import timm

    return timm
