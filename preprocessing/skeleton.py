"""Joint layouts the field uses: joint order, parents and left/right lists.

Two 17-joint layouts matter: Human3.6M's (VideoPose3D order, root = pelvis 0) and MPI-INF-3DHP's
(P-STMO order, root = pelvis 14). Flip augmentation swaps each layout's own left/right lists, so the
lists must come from here, never be hard-coded elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    """A joint layout: names, parent of each joint (-1 for the root), left and right joints."""

    name: str
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    root: int

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    def flip_permutation(self) -> np.ndarray:
        """Index array that swaps left and right joints (applied after negating x)."""
        perm = np.arange(self.num_joints)
        perm[list(self.left)] = self.right
        perm[list(self.right)] = self.left
        return perm

    def bones(self) -> list[tuple[int, int]]:
        """(parent, child) pairs for drawing."""
        return [(p, c) for c, p in enumerate(self.parents) if p >= 0]

    def side(self, joint: int) -> str:
        """'left', 'right' or 'centre' (for bone colours)."""
        if joint in self.left:
            return "left"
        if joint in self.right:
            return "right"
        return "centre"


H36M17 = Skeleton(
    name="h36m",
    joint_names=(
        "pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine",
        "thorax", "neck_nose", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder",
        "r_elbow", "r_wrist",
    ),
    parents=(-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
    left=(4, 5, 6, 11, 12, 13),
    right=(1, 2, 3, 14, 15, 16),
    root=0,
)

MPI17 = Skeleton(
    name="mpi_inf_3dhp",
    joint_names=(
        "head_top", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow",
        "l_wrist", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "pelvis",
        "spine", "head",
    ),
    # P-STMO / MPI-INF-3DHP 17-joint tree, rooted at the pelvis (14).
    parents=(16, 15, 1, 2, 3, 1, 5, 6, 14, 8, 9, 14, 11, 12, -1, 14, 1),
    left=(5, 6, 7, 11, 12, 13),
    right=(2, 3, 4, 8, 9, 10),
    root=14,
)

SKELETONS: dict[str, Skeleton] = {s.name: s for s in (H36M17, MPI17)}

# Human3.6M's 32 mocap joints -> the 17 everyone uses (VideoPose3D `remove_joints`).
H36M32_KEPT = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
H36M32_DROPPED = (4, 5, 9, 10, 11, 16, 20, 21, 22, 23, 24, 28, 29, 30, 31)

# MixSTE's per-joint loss weights (H36M order).
H36M_JOINT_WEIGHTS = (1, 1, 2.5, 2.5, 1, 2.5, 2.5, 1, 1, 1, 1.5, 1.5, 4, 4, 1.5, 4, 4)


def get_skeleton(name: str) -> Skeleton:
    try:
        return SKELETONS[name]
    except KeyError:
        raise ValueError(f"unknown skeleton layout {name!r} (expected one of {sorted(SKELETONS)})") from None


def reduce_h36m32(positions: np.ndarray) -> np.ndarray:
    """(..., 32, 3) Human3.6M mocap joints -> (..., 17, 3) in the standard order."""
    if positions.shape[-2] != 32:
        raise ValueError(f"expected 32 joints, got {positions.shape[-2]}")
    return positions[..., list(H36M32_KEPT), :]
