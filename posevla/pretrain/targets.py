"""Pose-token prompts and answers in the paper's format, as training samples the model's Batcher consumes.

Grounding (stage 1), one question per category of an image, naming the category as the paper's evaluation
does (Omni3D protocol, category in the prompt):

    prompt  "detect 3d red box"
    answer  "red box <loc0412><loc0530> <trans_xy_..><trans_xy_..><trans_z_..> <rot_..><rot_..><rot_..>
             <size_..><size_..><size_..> ; red box ..."        (one tuple per instance, nearest first)
    answer  "no object"                                         (a category of the source absent from the image)

(`posevla.model.pose_sequence` writes the tuples: box centre as <loc> y then x in the model image, translation
of the box centre and extrinsic-xyz Euler angles of T_cam_obj, size along the object's x, y, z.)

Trajectory (stage 2): "trajectory <instruction>" -> "left gripper <pose>... ; right gripper <pose>..." with the
future TCP poses of each arm in the optical frame of the camera whose image is shown.

Samples carry a single view in the model's reference-view slot (a camera-centric sample has no robot); the
robot state they carry is a neutral placeholder that the next-token loss never reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from posevla.model.batching import TrainingSample
from posevla.model.config import PoseVLAConfig
from posevla.model.pose_sequence import (
    SEPARATOR,
    PoseParseError,
    PoseTrajectory,
    PoseTuple,
    encode_trajectory,
    encode_tuples,
    parse_trajectory,
)
from posevla.model.pose_tokens import PoseTokenizer
from posevla.pretrain.boxes import Box3D
from posevla.pretrain.records import (
    AnnotatedImage,
    Object3D,
    model_pixel,
    normalised_centre,
    object_centre_pixel,
)
from posevla.types import ArmState, ModelView, Observation, RobotState

NO_OBJECT = "no object"
GROUNDING_PROMPT = "detect 3d {category}"
TRAJECTORY_PROMPT = "trajectory {instruction}"


def grounding_prompt(category: str) -> str:
    return GROUNDING_PROMPT.format(category=category.strip().lower())


@dataclass
class PretrainSample:
    """A training sample plus what evaluation needs: the category asked for and the ground-truth boxes."""

    sample: TrainingSample
    source: str
    category: str | None = None
    gt_boxes: list[Box3D] = field(default_factory=list)
    image_id: str = ""


def neutral_state(cfg: PoseVLAConfig) -> RobotState:
    """Placeholder robot state for camera-only samples (identity TCP poses; unused by the NTP loss)."""
    return RobotState({a: ArmState(np.eye(4), np.zeros(6), 0.0, 0) for a in cfg.arms}, 0)


def observation(view: ModelView, prompt: str, cfg: PoseVLAConfig) -> Observation:
    """A one-view observation in the model's reference-view slot."""
    view.name = cfg.reference_view
    return Observation({cfg.reference_view: view}, neutral_state(cfg), prompt, 0)


def pose_tuple(obj: Object3D, img: AnnotatedImage, view: ModelView) -> PoseTuple:
    uv = model_pixel(object_centre_pixel(obj, img.intrinsics), img.intrinsics, view.intrinsics)
    return PoseTuple(obj.category.strip().lower(), normalised_centre(uv, view.intrinsics), obj.box.T_cam_obj,
                     obj.box.size_xyz)


def grounding_answer(objects: list[Object3D], img: AnnotatedImage, view: ModelView, tok: PoseTokenizer) -> str:
    """Tuples of the given objects, nearest (Euclidean distance of the box centre) first; 'no object' if none."""
    if not objects:
        return NO_OBJECT
    ordered = sorted(objects, key=lambda o: o.distance_m)
    return encode_tuples([pose_tuple(o, img, view) for o in ordered], tok)


def asked_categories(img: AnnotatedImage, rng: np.random.Generator | None = None, negatives: int = 1) -> list[str]:
    """The categories asked of an image: every category present, plus up to `negatives` absent categories of the
    source (answered 'no object'), drawn with `rng` (in order when None)."""
    present = sorted({o.category.strip().lower() for o in img.objects})
    absent = [c for c in (x.strip().lower() for x in img.categories) if c not in present]
    asked = list(present)
    if absent and negatives > 0:
        pick = (rng.permutation(len(absent)) if rng is not None else np.arange(len(absent)))[:negatives]
        asked += [absent[int(i)] for i in pick]
    return asked


def grounding_sample(img: AnnotatedImage, view: ModelView, category: str, cfg: PoseVLAConfig, tok: PoseTokenizer,
                     with_answer: bool = True) -> PretrainSample:
    """The question for one category of an image and its answer (tuples nearest first, or 'no object')."""
    objs = [o for o in img.objects if o.category.strip().lower() == category]
    answer = grounding_answer(objs, img, view, tok) if with_answer else None
    obs = observation(view, grounding_prompt(category), cfg)
    return PretrainSample(TrainingSample(obs, pose_text=answer), img.source, category, [o.box for o in objs],
                          img.image_id)


def grounding_samples(img: AnnotatedImage, view: ModelView, cfg: PoseVLAConfig, tok: PoseTokenizer,
                      rng: np.random.Generator | None = None, negatives: int = 1,
                      with_answer: bool = True) -> list[PretrainSample]:
    """One sample per category present, plus up to `negatives` absent categories of the source ('no object')."""
    return [grounding_sample(img, view, cat, cfg, tok, with_answer) for cat in asked_categories(img, rng, negatives)]


def trajectory_answer(poses_by_arm: dict[str, np.ndarray], tok: PoseTokenizer) -> str:
    """{arm: (H, 4, 4) T_cam_tcp} -> '<arm> gripper <pose>... ; ...' (arms in the given order)."""
    return SEPARATOR.join(encode_trajectory(PoseTrajectory(f"{arm} gripper", list(T)), tok)
                          for arm, T in poses_by_arm.items())


def parse_trajectory_answer(text: str, tok: PoseTokenizer) -> dict[str, np.ndarray]:
    """Inverse of trajectory_answer; raises PoseParseError on malformed text."""
    out = {}
    for seg in text.split(";"):
        if not seg.strip():
            continue
        traj = parse_trajectory(seg, tok)
        arm = traj.category.removesuffix(" gripper").strip()
        if not arm or arm in out:
            raise PoseParseError(f"unexpected trajectory label {traj.category!r}", 0)
        out[arm] = np.stack(traj.poses)
    if not out:
        raise PoseParseError("empty trajectory answer", 0)
    return out
