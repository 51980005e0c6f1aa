"""PoseVLAConfig: every size and switch of the model, read from / written to YAML (models/*.yaml)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from posevla.yaml_file import read_yaml

ARM_ACTION_DIM = 10  # position (3, metres) + rotation 6D (6) + gripper opening (1, 0..1)
FUSION_POINTS = ("siglip_output",)
MODALITIES = ("rgb", "rgb+ray", "rgb+depth", "full")


def _valid_crop(c: Any) -> bool:
    """[x0, y0, x1, y1] fractions with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1."""
    try:
        x0, y0, x1, y1 = (float(v) for v in c)
    except (TypeError, ValueError):
        return False
    return 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0


@dataclass
class PoseVLAConfig:
    """Sizes of the SigLIP vision tower, the Gemma language model and the action expert, plus I/O layout.

    Actions and state per arm: [x, y, z (m), rot6d (6), gripper (0..1)] in the reference view's optical frame.
    """

    image_size: int = 224
    patch_size: int = 14
    views: tuple[str, ...] = ("head", "left_wrist", "right_wrist")
    reference_view: str = "head"
    arms: tuple[str, ...] = ("left", "right")
    chunk_length: int = 50
    flow_steps: int = 10
    control_dt: float = 1.0 / 30.0  # seconds between chunk points
    max_prompt_tokens: int = 64
    num_pose_bins: int = 1024
    fusion: str = "siglip_output"
    p_drop_ray: float = 0.3  # modality masking probabilities (training only)
    p_drop_depth: float = 0.3
    state_input: bool = True  # False: the robot state is not shown to the model (a constant, the data mean), so
    # actions cannot be copied from proprioception (copycat): training and inference alike (model.batching)
    p_drop_state: float = 0.0  # training only: a sample's state is hidden (the data mean) with this probability, so
    # the actions must also be read from the images; the state is always shown at inference
    relative_positions: bool = False  # True: each chunk point's position is predicted relative to the arm's
    # current TCP position (the state, both in the reference frame): the model outputs the offset it must travel
    # (what a wrist view shows), not where that is in the head camera; rotations and grippers stay absolute.
    # Training targets, normalisation statistics and decoding alike (io_transforms.to/from_model_actions)
    isotropic_position_norm: bool = False  # True: each arm's three position dimensions of the actions share one
    # normalisation std (the RMS of their three), so a centimetre of error costs the same along every axis of the
    # reference frame; per-dimension z-scoring weighs the axis with the least spread most (the twin's head frame:
    # x 2.3 cm, y 4.3 cm, z 5.5 cm of relative-position spread, so a cube's base-y error costs ~5x a base-x one)
    ntp_weight: float = 1.0
    flow_weight: float = 1.0
    # region of interest per view: [x0, y0, x1, y1] as fractions of the camera image's width and height; that
    # region (not the whole image) is resized with padding to image_size, intrinsics updated exactly (so raymaps,
    # depth and the camera frame of the actions stay exact). Empty: every view whole. Same in training and on the
    # robot (the observation builder reads it from here).
    view_crops: dict[str, list[float]] = field(default_factory=dict)
    # training-only image augmentation (EpisodeChunkDataset.augmented): each view is cropped to a random square-
    # aspect sub-region whose sides are s in [aug_crop_scale, 1] of its region of interest (or of the image) and
    # resized as usual, intrinsics updated exactly: raymaps move with the pixels and the camera frame of the actions
    # is unchanged, so the crop teaches reading the geometry, not pixel positions. 1.0: off.
    aug_crop_scale: float = 1.0
    # brightness and contrast each scaled by a factor in [1 - aug_color, 1 + aug_color] per view (0: off)
    aug_color: float = 0.0
    # training only: view -> probability that a sample's view is hidden (its image tokens masked from attention, as
    # a missing camera), e.g. {left_wrist: 0.3}, so the policy also learns to act from the other views (the head
    # camera) where that view does not see the object yet; every view is shown at inference. Empty: off.
    p_drop_view: dict[str, float] = field(default_factory=dict)
    vision: dict[str, Any] = field(default_factory=lambda: {
        "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16})
    text: dict[str, Any] = field(default_factory=lambda: {
        "hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18, "num_attention_heads": 8,
        "num_key_value_heads": 1, "head_dim": 256})
    expert: dict[str, Any] = field(default_factory=lambda: {"hidden_size": 1024, "intermediate_size": 4096})

    def __post_init__(self) -> None:
        self.views = tuple(self.views)
        self.arms = tuple(self.arms)
        checks = {
            "image_size": self.image_size > 0 and self.image_size % self.patch_size == 0,
            "reference_view": self.reference_view in self.views,
            "arms": len(self.arms) in (1, 2) and set(self.arms) <= {"left", "right"},
            "chunk_length": self.chunk_length >= 1,
            "flow_steps": self.flow_steps >= 1,
            "control_dt": self.control_dt > 0,
            "fusion": self.fusion in FUSION_POINTS,
            "p_drop_ray": 0 <= self.p_drop_ray <= 1,
            "p_drop_depth": 0 <= self.p_drop_depth <= 1,
            "state_input": isinstance(self.state_input, bool),
            "p_drop_state": 0 <= self.p_drop_state <= 1,
            "relative_positions": isinstance(self.relative_positions, bool),
            "isotropic_position_norm": isinstance(self.isotropic_position_norm, bool),
            "aug_crop_scale": 0 < self.aug_crop_scale <= 1,
            "aug_color": 0 <= self.aug_color < 1,
            "p_drop_view": isinstance(self.p_drop_view, dict) and all(
                v in self.views and 0 <= p < 1 for v, p in self.p_drop_view.items())
            and set(self.views) - {v for v, p in self.p_drop_view.items() if p > 0} != set(),
            "view_crops": isinstance(self.view_crops, dict) and all(
                v in self.views and _valid_crop(c) for v, c in self.view_crops.items()),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"model config field {name}={getattr(self, name)!r} is invalid")

    @property
    def action_dim(self) -> int:
        return ARM_ACTION_DIM * len(self.arms)

    @property
    def state_dim(self) -> int:
        return ARM_ACTION_DIM * len(self.arms)

    @property
    def tokens_per_view(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["views"], d["arms"] = list(self.views), list(self.arms)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> PoseVLAConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{source}: unknown model config field(s) {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> PoseVLAConfig:
        path = Path(path)
        data = read_yaml(path, "model config")
        if not isinstance(data, dict):
            raise ValueError(f"model config {path} must be a mapping")
        return cls.from_dict(data, str(path))

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
