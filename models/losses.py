"""Training losses of each lifter, with padded/invalid frames masked out.

`build_loss(model_name, loss="auto")` returns `loss_fn(outputs, batch) -> (loss, logs)` where
`batch` holds `positions_3d` (target, metres) and `mask` (1 = real frame that counts; default all
1). The target's root joint is zeroed (training targets are root-relative; docs/field_notes.md); the
prediction is left as the model made it. Every masked mean divides by the number of real elements,
so with an all-ones mask each loss equals the reference code's plain `torch.mean`.

- `mixste`: WMPJPE (per-joint weights, H36M_JOINT_WEIGHTS for the H36M layout, uniform otherwise)
  + 0.5 * TC (joint-weighted mean of squared first differences of the prediction) + 2.0 * MPJVE,
  as MixSTE's training loop. The gradient is that of this loss (MixSTE's `backward(loss.detach())`
  misuse is not reproduced).
- `mpjpe`: MPJPE of the output against the target window (PoseFormer/CrossFormer: the centre
  frame, target (B, 1, J, 3)).
- `fusionformer`: lambda_m * MPJPE(all frames of outputs["pose"]) + lambda_r * MPJPE(outputs["refined"]),
  the refined pose being the centre frame (B, 1, J, 3; the paper variant) or every frame
  (B, T, J, 3; the official variant, as the authors' run.py trains it). lambda_m = lambda_r = 1:
  the Fusionformer paper's text gives no values we could find; the authors' code
  (yuxinwei123/Fusionformer run.py) sums the two terms unweighted.
- `multiview`: MPJPE per view, averaged over views (B, T, V, J, 3).
- `keypoints_2d` (MPSTR, an images -> 2D model): masked MSE of the predicted 2D keypoints
  (B, T, V, J, 2) against `batch["keypoints_2d"]` (pixels of the crop), as the authors' training
  (`nn.MSELoss` on pixel coordinates); no root zeroing. Logs `rmse_px`.

Precision: every loss is computed in fp32 from the fp32 targets, with autocast disabled inside
the loss, whatever the forward pass ran in. Under bf16 autocast only the model's forward is bf16;
its output is promoted to fp32 here (bf16 would round metres in 2-4 mm steps, the size of the
velocity and temporal-consistency terms MixSTE supervises).

`forward_for_loss(model, x, camera)` calls a model the way its loss needs (Fusionformer with
`return_all=True`, and the camera inputs `camera_kwargs` reads from the batch for models that
declare `camera_inputs`), so the training loop stays model-agnostic.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import nn

from preprocessing.errors import DataError
from preprocessing.skeleton import H36M17, H36M_JOINT_WEIGHTS, Skeleton, get_skeleton

LossFn = Callable[[Any, Mapping[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]

# registry model name -> loss used by loss="auto"
AUTO_LOSS: dict[str, str] = {
    "mixste": "mixste",
    "poseformer": "mpjpe",
    "crossformer": "mpjpe",
    "fusionformer": "fusionformer",
    "multiview": "multiview",
    "mpstr": "keypoints_2d",
}
LOSSES = ("mixste", "mpjpe", "fusionformer", "multiview", "keypoints_2d")

# MixSTE's weights of the temporal-consistency and velocity terms.
MIXSTE_TC_WEIGHT = 0.5
MIXSTE_VELOCITY_WEIGHT = 2.0
# Fusionformer's term weights (see the module docstring).
FUSIONFORMER_LAMBDA_M = 1.0
FUSIONFORMER_LAMBDA_R = 1.0


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` (B, T, ...) over the elements whose frame has mask 1 (mask (B, T)).

    Dividing by the number of counted elements keeps the value comparable across batches with
    different amounts of padding; an all-padding batch gives 0 (with a gradient path).
    """
    m = mask.to(values.dtype).reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
    m = m.expand_as(values)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def joint_weights(layout: Union[str, Skeleton, None], joints: int) -> torch.Tensor:
    """MixSTE's per-joint weights for the 17-joint H36M layout; uniform for any other layout."""
    name = layout.name if isinstance(layout, Skeleton) else layout
    if name == H36M17.name and joints == len(H36M_JOINT_WEIGHTS):
        return torch.tensor(H36M_JOINT_WEIGHTS, dtype=torch.float32)
    return torch.ones(joints, dtype=torch.float32)


def _frame_mask(batch: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """(B, T) mask from the batch (default all ones), checked against the target's frames."""
    mask = batch.get("mask")
    if mask is None:
        return torch.ones(target.shape[:2], dtype=target.dtype, device=target.device)
    mask = mask.to(device=target.device, dtype=target.dtype)
    if tuple(mask.shape) != tuple(target.shape[:2]):
        raise ValueError(f"batch mask shape {tuple(mask.shape)} does not match target frames {tuple(target.shape[:2])}")
    return mask


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """`t` promoted to at least fp32 (bf16/fp16 autocast outputs become fp32; fp64 stays)."""
    return t if t.dtype == torch.float64 else t.float()


def _target(batch: Mapping[str, torch.Tensor], root: int, like: torch.Tensor) -> torch.Tensor:
    """The batch's target on `like`'s device, in fp32 (never the prediction's bf16), root zeroed."""
    target = _fp32(batch["positions_3d"].to(device=like.device))
    target = target.clone()
    target[..., root, :] = 0.0
    return target


def _device_type(outputs: Any) -> str:
    """'cuda' or 'cpu': where the (first tensor of the) model outputs live."""
    tensors = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs.values()) if isinstance(outputs, Mapping) else []
    return next((t.device.type for t in tensors if isinstance(t, torch.Tensor)), "cpu")


def _fp32_outputs(outputs: Any) -> Any:
    """Tensor outputs (or a mapping of them) promoted to fp32 for the loss."""
    if isinstance(outputs, torch.Tensor):
        return _fp32(outputs)
    if isinstance(outputs, Mapping):
        return {k: _fp32(v) if isinstance(v, torch.Tensor) else v for k, v in outputs.items()}
    return outputs


def _check_shapes(pred: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"{what}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")


def mpjpe_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked MPJPE (metres): mean Euclidean joint error over real frames (and views)."""
    return masked_mean(torch.linalg.vector_norm(pred - target, dim=-1), mask)


def weighted_mpjpe_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Masked WMPJPE: mean over frames and joints of w_j * |pred_j - target_j|."""
    err = torch.linalg.vector_norm(pred - target, dim=-1)  # (B, T, J)
    return masked_mean(err * w.to(err), mask)


def _step_mask(mask: torch.Tensor) -> torch.Tensor:
    """Mask of frame steps t -> t+1: both frames must be real. (B, T) -> (B, T-1)."""
    return mask[:, 1:] * mask[:, :-1]


def temporal_consistency_loss(pred: torch.Tensor, mask: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """MixSTE's TC term: mean of w_j * (pred_{t+1} - pred_t)^2 over real steps, joints and xyz."""
    diff = pred[:, 1:] - pred[:, :-1]  # (B, T-1, J, 3)
    return masked_mean(diff.square() * w.to(diff)[:, None], _step_mask(mask))


def velocity_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MPJVE: MPJPE of the first differences, over steps between two real frames."""
    vp = pred[:, 1:] - pred[:, :-1]
    vt = target[:, 1:] - target[:, :-1]
    return masked_mean(torch.linalg.vector_norm(vp - vt, dim=-1), _step_mask(mask))


def _as_tensor_output(outputs: Any, what: str) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    raise ValueError(f"{what} loss expects a tensor output, got {type(outputs).__name__}")


def _mm(value: torch.Tensor) -> float:
    return float(value.detach()) * 1000.0


def build_loss(
    model_name: str,
    loss: str = "auto",
    layout: Union[str, Skeleton] = "h36m",
    lambda_m: float = FUSIONFORMER_LAMBDA_M,
    lambda_r: float = FUSIONFORMER_LAMBDA_R,
) -> LossFn:
    """The loss callable for `model_name` (`loss="auto"`) or the named `loss`.

    `layout` is the dataset's joint layout (checkpoint meta "layout"): it picks the root joint
    whose target is zeroed and whether MixSTE's H36M joint weights apply. The callable returns
    `(loss, logs)`; `logs` holds each term's float value (metres) and `mpjpe_mm`, the masked
    unweighted MPJPE of the final prediction in mm (comparable across models).
    """
    if loss == "auto":
        if model_name not in AUTO_LOSS:
            raise ValueError(f"no automatic loss for model {model_name!r} (known: {', '.join(AUTO_LOSS)})")
        loss = AUTO_LOSS[model_name]
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} (expected 'auto' or one of {', '.join(LOSSES)})")
    skeleton = layout if isinstance(layout, Skeleton) else get_skeleton(layout)
    root = skeleton.root

    def mixste(outputs: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        pred = _as_tensor_output(outputs, "mixste")  # (B, T, J, 3)
        target = _target(batch, root, pred)
        _check_shapes(pred, target, "mixste loss")
        mask = _frame_mask(batch, target)
        w = joint_weights(skeleton, pred.shape[-2]).to(pred.device)
        wmpjpe = weighted_mpjpe_loss(pred, target, mask, w)
        tc = temporal_consistency_loss(pred, mask, w)
        vel = velocity_loss(pred, target, mask)
        total = wmpjpe + MIXSTE_TC_WEIGHT * tc + MIXSTE_VELOCITY_WEIGHT * vel
        with torch.no_grad():
            plain = mpjpe_loss(pred, target, mask)
        logs = {"loss": float(total.detach()), "wmpjpe": float(wmpjpe.detach()), "tc": float(tc.detach()),
                "mpjve": float(vel.detach()), "mpjpe_mm": _mm(plain)}
        return total, logs

    def mpjpe(outputs: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        pred = _as_tensor_output(outputs, "mpjpe")  # (B, 1, J, 3) seq2frame or (B, T, J, 3)
        target = _target(batch, root, pred)
        _check_shapes(pred, target, "mpjpe loss")
        value = mpjpe_loss(pred, target, _frame_mask(batch, target))
        return value, {"loss": float(value.detach()), "mpjpe_mm": _mm(value)}

    def fusionformer(outputs: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if not isinstance(outputs, Mapping) or "pose" not in outputs or "refined" not in outputs:
            raise ValueError(
                "fusionformer loss expects model(x, return_all=True) outputs {'pose', 'refined'} "
                "(call models.losses.forward_for_loss)"
            )
        pose, refined = outputs["pose"], outputs["refined"]  # (B, T, J, 3), (B, 1, J, 3)
        target = _target(batch, root, pose)
        _check_shapes(pose, target, "fusionformer loss (pose)")
        mask = _frame_mask(batch, target)
        if refined.shape[1] == 1:  # paper variant: the refined centre frame
            c = target.shape[1] // 2
            refined_target, refined_mask = target[:, c : c + 1], mask[:, c : c + 1]
        else:  # official variant (run.py): the refined pose of every frame
            refined_target, refined_mask = target, mask
        _check_shapes(refined, refined_target, "fusionformer loss (refined)")
        loss_m = mpjpe_loss(pose, target, mask)
        loss_r = mpjpe_loss(refined, refined_target, refined_mask)
        total = lambda_m * loss_m + lambda_r * loss_r
        logs = {"loss": float(total.detach()), "mpjpe_pose": float(loss_m.detach()),
                "mpjpe_refined": float(loss_r.detach()), "mpjpe_mm": _mm(loss_m)}
        return total, logs

    def multiview(outputs: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        pred = _as_tensor_output(outputs, "multiview")  # (B, T, V, J, 3)
        target = _target(batch, root, pred)
        _check_shapes(pred, target, "multiview loss")
        if pred.ndim != 5:
            raise ValueError(f"multiview loss expects (B, T, V, J, 3), got {tuple(pred.shape)}")
        mask = _frame_mask(batch, target)
        per_view = torch.stack(
            [mpjpe_loss(pred[:, :, v], target[:, :, v], mask) for v in range(pred.shape[2])]
        )
        value = per_view.mean()
        logs = {"loss": float(value.detach()), "mpjpe_mm": _mm(value)}
        logs.update({f"mpjpe_view{v}": float(x) for v, x in enumerate(per_view.detach().tolist())})
        return value, logs

    def keypoints_2d(outputs: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        pred = _as_tensor_output(outputs, "keypoints_2d")  # (B, T, V, J, 2) pixels
        target = batch["keypoints_2d"].to(device=pred.device, dtype=pred.dtype)
        _check_shapes(pred, target, "keypoints_2d loss")
        value = masked_mean((pred - target).square(), _frame_mask(batch, target))
        return value, {"loss": float(value.detach()), "rmse_px": float(value.detach()) ** 0.5}

    chosen = {"mixste": mixste, "mpjpe": mpjpe, "fusionformer": fusionformer, "multiview": multiview,
              "keypoints_2d": keypoints_2d}[loss]

    def fp32_loss(outputs: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.autocast(device_type=_device_type(outputs), enabled=False):
            return chosen(_fp32_outputs(outputs), batch)

    return fp32_loss


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def supports_return_all(model: nn.Module) -> bool:
    """Whether the (unwrapped) model's forward takes `return_all` (Fusionformer)."""
    forward = type(unwrap(model)).forward
    return "return_all" in inspect.signature(forward).parameters


def normalised_intrinsics(intrinsics: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """(..., 9) pixel intrinsics and (..., 2) image (width, height) -> (..., 4) [fx, fy, cx, cy]
    normalised like the keypoints: f / w * 2, c / w * 2 - [1, h / w] (VideoPose3D's and
    Fusionformer's `cam['intrinsic']`)."""
    w, h = image_size[..., 0].double(), image_size[..., 1].double()
    fx, fy, cx, cy = (intrinsics[..., i].double() for i in range(4))
    return torch.stack([fx / w * 2, fy / w * 2, cx / w * 2 - 1, cy / w * 2 - h / w], dim=-1).float()


def camera_kwargs(model: nn.Module, batch: Mapping[str, torch.Tensor],
                  root_frame: Optional[int] = None) -> dict[str, torch.Tensor]:
    """The camera inputs a model reads (its `camera_inputs`, e.g. Fusionformer's refinement:
    "intrinsics", "root_depth"), from a batch's `intrinsics` (B, 9) pixels, `image_size` (B, 2) and
    `trajectory` (B, T', 3) columns: normalised [fx, fy, cx, cy] (B, 4), and the ground-truth root
    depth in metres, per target frame (B, T') or, with `root_frame`, of that window frame only
    (B,). Empty for models that read none. DataError when the batch lacks a column or holds no
    camera (fx <= 0: P-STMO's MPI-INF-3DHP files have none) or no root depth (<= 0)."""
    wanted = tuple(getattr(unwrap(model), "camera_inputs", ()))
    if not wanted:
        return {}
    missing = [k for k in ("intrinsics", "image_size", "trajectory") if k not in batch]
    if missing:
        raise DataError(f"model {type(unwrap(model)).__name__} reads {', '.join(wanted)} but the windows have no "
                        f"{', '.join(missing)} column (rebuild the dataset with this raylift)")
    out: dict[str, torch.Tensor] = {}
    if "intrinsics" in wanted:
        intrinsics = torch.as_tensor(batch["intrinsics"])
        if not bool((intrinsics[..., 0] > 0).all()):
            raise DataError("the windows carry no camera intrinsics (fx = 0, e.g. MPI-INF-3DHP from P-STMO's files), "
                            "which this model's refinement needs")
        out["intrinsics"] = normalised_intrinsics(intrinsics, torch.as_tensor(batch["image_size"]))
    if "root_depth" in wanted:
        depth = torch.as_tensor(batch["trajectory"])[..., 2]  # (B, T')
        if root_frame is not None:
            depth = depth[:, root_frame]
        if not bool((depth > 0).all()):
            raise DataError("the windows carry no root depth (trajectory z <= 0), which this model's refinement "
                            "reads as the ground truth (model.root_depth: gt); use model.root_depth=estimate")
        out["root_depth"] = depth.float()
    return out


def forward_for_loss(model: nn.Module, x: torch.Tensor, camera: Optional[Mapping[str, torch.Tensor]] = None) -> Any:
    """Run `model` on `x` producing what its loss consumes: `model(x, return_all=True)` for models
    whose forward supports it (Fusionformer's pose + refined pose), else `model(x)`; `camera`
    (`camera_kwargs`) is passed on as keyword arguments. Calls go through the wrapper (DDP,
    compiled) so its hooks and gradient sync still apply."""
    kwargs = dict(camera or {})
    if supports_return_all(model):
        return model(x, return_all=True, **kwargs)
    return model(x, **kwargs)
