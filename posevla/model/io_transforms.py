"""Robot-specific input and output transforms for the X-Trainer (openpi style): Observation <-> model arrays.

Inputs: each configured view's model-size RGB (-> [-1, 1], channels first), raymap (3, S, S) and depth
prior (2, S, S) (zeros when the view has no depth), a per-view presence mask, and the robot state: each
arm's TCP pose expressed in the reference view's optical frame, T_ref_tcp = inv(T_base_ref) @ T_base_tcp,
as [x, y, z (m), rot6d, gripper]. Outputs: the same layout per chunk step -> ActionChunk of T_ref_tcp.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from posevla.geometry import se3
from posevla.model.config import ARM_ACTION_DIM, PoseVLAConfig
from posevla.model.normalization import NormStats
from posevla.types import ActionChunk, ArmChunk, Observation, RobotState


def pose_to_vector(T: np.ndarray, gripper: float | np.ndarray) -> np.ndarray:
    """(..., 4, 4) pose and gripper (...) -> (..., 10) [x, y, z, rot6d, gripper]."""
    T = np.asarray(T, dtype=np.float64)
    g = np.asarray(gripper, dtype=np.float64)[..., None]
    return np.concatenate([T[..., :3, 3], se3.rot6d_from_matrix(T[..., :3, :3]), g], axis=-1)


def _position_columns(cfg: PoseVLAConfig) -> np.ndarray:
    return np.array([i * ARM_ACTION_DIM + k for i in range(len(cfg.arms)) for k in range(3)])


def to_model_actions(actions: np.ndarray, state: np.ndarray, cfg: PoseVLAConfig) -> np.ndarray:
    """Absolute chunks (..., chunk, action_dim) -> what the model predicts (unnormalised): unchanged, or with
    `cfg.relative_positions` each point's position minus the arm's state position (..., state_dim), metres in
    the reference frame."""
    actions = np.asarray(actions, dtype=np.float64)
    if not cfg.relative_positions:
        return actions
    cols = _position_columns(cfg)
    out = actions.copy()
    out[..., cols] -= np.asarray(state, dtype=np.float64)[..., None, cols]
    return out


def from_model_actions(actions: np.ndarray, state: np.ndarray, cfg: PoseVLAConfig) -> np.ndarray:
    """Inverse of `to_model_actions`: the model's unnormalised chunk and the state it saw -> absolute chunk."""
    actions = np.asarray(actions, dtype=np.float64)
    if not cfg.relative_positions:
        return actions
    cols = _position_columns(cfg)
    out = actions.copy()
    out[..., cols] += np.asarray(state, dtype=np.float64)[..., None, cols]
    return out


def fit_norm_stats(states: np.ndarray, actions: np.ndarray, cfg: PoseVLAConfig) -> NormStats:
    """The normalisation statistics of a training set: states (N, state_dim), absolute chunks (N, chunk,
    action_dim) -> per-dimension z-scoring of the state and of what the model predicts (`to_model_actions`);
    with `cfg.isotropic_position_norm` each arm's three position stds replaced by their RMS (one metric scale)."""
    norm = NormStats.fit(states, to_model_actions(actions, states, cfg))
    if cfg.isotropic_position_norm:
        for i in range(len(cfg.arms)):
            cols = np.arange(3) + i * ARM_ACTION_DIM
            norm.action_std[cols] = float(np.sqrt(np.mean(norm.action_std[cols] ** 2)))
    return norm


def vector_to_pose(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 10) -> pose (..., 4, 4) (rotation by Gram-Schmidt) and gripper (...)."""
    v = np.asarray(v, dtype=np.float64)
    return se3.make_T(se3.matrix_from_rot6d(v[..., 3:9]), v[..., :3]), v[..., 9]


@dataclass
class XTrainerInputs:
    cfg: PoseVLAConfig

    def reference_pose(self, obs: Observation) -> np.ndarray:
        ref = obs.views.get(self.cfg.reference_view)
        if ref is None:
            raise ValueError(f"observation has no {self.cfg.reference_view!r} view (the model's reference frame)")
        if ref.T_base_cam is None:
            raise ValueError(f"view {self.cfg.reference_view!r} has no camera pose T_base_cam "
                             "(is the hand-eye calibration loaded?)")
        return np.asarray(ref.T_base_cam, dtype=np.float64)

    def state_vector(self, state: RobotState | None, T_base_ref: np.ndarray) -> np.ndarray:
        if state is None:
            raise ValueError("observation has no robot state")
        T_ref_base = se3.invert_T(T_base_ref)
        parts = []
        for arm in self.cfg.arms:
            if arm not in state.arms:
                raise ValueError(f"robot state has no {arm!r} arm (model arms: {list(self.cfg.arms)})")
            a = state.arms[arm]
            if not np.all(np.isfinite(a.T_base_tcp)):
                raise ValueError(f"robot state: {arm} arm TCP pose has NaN or inf")
            if not np.isfinite(a.gripper):
                raise ValueError(f"robot state: {arm} gripper opening is not measured (NaN: its bus reading is "
                                 "missing or stale)")
            parts.append(pose_to_vector(T_ref_base @ a.T_base_tcp, a.gripper))
        vec = np.concatenate(parts)
        if not np.all(np.isfinite(vec)):
            raise ValueError("robot state has NaN or inf")
        return vec

    def __call__(self, obs: Observation) -> dict[str, np.ndarray]:
        s, views = self.cfg.image_size, self.cfg.views
        pixels = np.zeros((len(views), 3, s, s), np.float32)
        rays = np.zeros((len(views), 3, s, s), np.float32)
        depth = np.zeros((len(views), 2, s, s), np.float32)
        present = np.zeros(len(views), bool)
        for i, name in enumerate(views):
            view = obs.views.get(name)
            if view is None:
                continue
            if view.rgb.shape != (s, s, 3) or view.rgb.dtype != np.uint8:
                raise ValueError(f"view {name!r}: rgb has shape {view.rgb.shape} {view.rgb.dtype}, "
                                 f"expected ({s}, {s}, 3) uint8")
            if view.raymap.shape != (s, s, 3):
                raise ValueError(f"view {name!r}: raymap has shape {view.raymap.shape}, expected ({s}, {s}, 3)")
            pixels[i] = view.rgb.transpose(2, 0, 1) * np.float32(2.0 / 255.0) - 1.0
            rays[i] = view.raymap.transpose(2, 0, 1)
            if view.depth_prior is not None:
                if view.depth_prior.shape != (s, s, 2):
                    raise ValueError(f"view {name!r}: depth prior has shape {view.depth_prior.shape}, "
                                     f"expected ({s}, {s}, 2)")
                if not np.all(np.isfinite(view.depth_prior)):
                    raise ValueError(f"view {name!r}: depth prior has NaN or inf")
                depth[i] = view.depth_prior.transpose(2, 0, 1)
            present[i] = True
        if not present.any():
            raise ValueError(f"observation has none of the model's views {list(views)}")
        T_base_ref = self.reference_pose(obs)
        return {"pixel_values": pixels, "raymaps": rays, "depth_priors": depth, "view_mask": present,
                "state": self.state_vector(obs.state, T_base_ref).astype(np.float32), "T_base_ref": T_base_ref}


@dataclass
class XTrainerOutputs:
    cfg: PoseVLAConfig

    def __call__(self, actions: np.ndarray, obs: Observation) -> ActionChunk:
        """actions (chunk, action_dim) as the model predicts them, unnormalised (relative positions are added to
        the observation's state, see `from_model_actions`) -> ActionChunk of T_ref_tcp in the reference frame."""
        if actions.shape != (self.cfg.chunk_length, self.cfg.action_dim):
            raise ValueError(f"actions have shape {actions.shape}, expected "
                             f"({self.cfg.chunk_length}, {self.cfg.action_dim})")
        if self.cfg.relative_positions:
            inputs = XTrainerInputs(self.cfg)
            actions = from_model_actions(actions, inputs.state_vector(obs.state, inputs.reference_pose(obs)),
                                         self.cfg)
        arms = {}
        for i, arm in enumerate(self.cfg.arms):
            T, g = vector_to_pose(actions[:, i * ARM_ACTION_DIM:(i + 1) * ARM_ACTION_DIM])
            arms[arm] = ArmChunk(T=T, gripper=np.clip(g, 0.0, 1.0))
        ref = obs.views[self.cfg.reference_view]
        return ActionChunk(frame_id=ref.frame_id, stamp_ns=obs.stamp_ns, dt=self.cfg.control_dt, arms=arms)

    def target_vector(self, chunk_T_ref_tcp: dict[str, np.ndarray], gripper: dict[str, np.ndarray]) -> np.ndarray:
        """Training targets: per-arm (chunk, 4, 4) poses in the reference frame and grippers -> (chunk, dim)."""
        return np.concatenate([pose_to_vector(chunk_T_ref_tcp[a], gripper[a]) for a in self.cfg.arms], axis=-1)
