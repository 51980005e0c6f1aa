"""Structured pose sequences: (category, 2D box centre, camera-frame pose [, size]) tuples <-> token text.

One tuple reads `red cup <loc0412><loc0530> <trans_xy_12><trans_xy_900><trans_z_311> <rot_1><rot_2><rot_3>`
optionally followed by ` <size_a><size_b><size_c>`; tuples are joined by " ; " as in PaliGemma's detection
output. The box centre follows PaliGemma's y-before-x order: `<loc{v}><loc{u}>` with
loc = floor(coord * 1024) clipped to 0..1023 for normalised coordinates in [0, 1) (decoded at bin centres).
A trajectory reads `gripper <trans..><rot..> <trans..><rot..> ...` (temporally ordered TCP poses).
Poses are T_cam_obj (camera optical frame <- object), metres, extrinsic-xyz Euler angles for <rot>.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from posevla.geometry import se3
from posevla.model.pose_tokens import PoseTokenizer

LOC_BINS = 1024
SEPARATOR = " ; "
_TOKEN = re.compile(r"<(loc)(\d{4})>|<(rot|trans_xy|trans_z|size)_(\d+)>")


class PoseParseError(ValueError):
    """Model output that is not a well-formed pose sequence. `position` is the character offset of the fault."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at character {position})")
        self.position = position


@dataclass
class PoseTuple:
    category: str
    center_uv: tuple[float, float]  # normalised, u right, v down, in [0, 1)
    T_cam_obj: np.ndarray  # 4x4
    size: np.ndarray | None = None  # (3,) metres


@dataclass
class PoseTrajectory:
    category: str
    poses: list[np.ndarray]  # 4x4 T_cam_gripper, temporally ordered


def _loc(x: float) -> int:
    if not np.isfinite(x):
        raise ValueError(f"box centre coordinate {x} is not finite")
    return int(np.clip(np.floor(x * LOC_BINS), 0, LOC_BINS - 1))


def _pose_tokens(T: np.ndarray, tok: PoseTokenizer) -> str:
    if not se3.is_rigid(T, 1e-5):
        raise ValueError("pose is not a finite rigid transform")
    xyz, rpy = se3.xyz_rpy_from_T(T)
    t = tok.encode_translation(xyz)
    r = tok.encode_rotation(rpy)
    return (f"<trans_xy_{t[0]}><trans_xy_{t[1]}><trans_z_{t[2]}> "
            f"<rot_{r[0]}><rot_{r[1]}><rot_{r[2]}>")


def encode_tuples(tuples: list[PoseTuple], tok: PoseTokenizer) -> str:
    parts = []
    for tp in tuples:
        if "<" in tp.category or ";" in tp.category or not tp.category.strip():
            raise ValueError(f"category {tp.category!r} must be non-empty and contain no '<' or ';'")
        u, v = tp.center_uv
        s = f"{tp.category.strip()} <loc{_loc(v):04d}><loc{_loc(u):04d}> {_pose_tokens(tp.T_cam_obj, tok)}"
        if tp.size is not None:
            b = tok.encode_size(np.asarray(tp.size, dtype=float))
            s += f" <size_{b[0]}><size_{b[1]}><size_{b[2]}>"
        parts.append(s)
    return SEPARATOR.join(parts)


def encode_trajectory(traj: PoseTrajectory, tok: PoseTokenizer) -> str:
    if not traj.poses:
        raise ValueError("trajectory has no poses")
    return f"{traj.category.strip()} " + " ".join(_pose_tokens(T, tok) for T in traj.poses)


# ---------------------------------------------------------------------------------------- parsing
def _tokens(text: str, start: int) -> tuple[str, list[tuple[str, int, int]]]:
    """Split one segment into its category (text before the first token) and (group, value, pos) tokens."""
    m = _TOKEN.search(text)
    if m is None:
        raise PoseParseError("no pose tokens", start + len(text))
    category = text[:m.start()].strip()
    if not category:
        raise PoseParseError("missing category before the first token", start)
    toks, pos = [], m.start()
    rest = text[m.start():]
    i = 0
    while i < len(rest):
        if rest[i].isspace():
            i += 1
            continue
        m = _TOKEN.match(rest, i)
        if m is None:
            raise PoseParseError(f"unexpected text {rest[i:i + 12]!r}", start + pos + i)
        group = m.group(1) or m.group(3)
        value = int(m.group(2) or m.group(4))
        toks.append((group, value, start + pos + i))
        i = m.end()
    return category, toks


def _take(toks: list, i: int, groups: tuple[str, ...], tok: PoseTokenizer, end: int) -> list[int]:
    out = []
    for k, g in enumerate(groups):
        if i + k >= len(toks):
            raise PoseParseError(f"sequence ends early: expected <{g}_..>", end)
        group, value, pos = toks[i + k]
        if group != g:
            raise PoseParseError(f"expected <{g}_..>, got <{group}..>", pos)
        limit = LOC_BINS if g == "loc" else tok.num_bins
        if not 0 <= value < limit:
            raise PoseParseError(f"<{g}> bin {value} out of range", pos)
        out.append(value)
    return out


_POSE_GROUPS = ("trans_xy", "trans_xy", "trans_z", "rot", "rot", "rot")


def _pose_from_bins(b: list[int], tok: PoseTokenizer) -> np.ndarray:
    xyz = tok.decode_translation(np.array(b[:3]))
    rpy = tok.decode_rotation(np.array(b[3:]))
    return se3.T_from_xyz_rpy(xyz, rpy)


def _segments(text: str) -> list[tuple[str, int]]:
    if not isinstance(text, str):
        raise PoseParseError(f"model output must be text, got {type(text).__name__}", 0)
    out, pos = [], 0
    for seg in text.split(";"):
        if seg.strip():
            out.append((seg, pos))
        pos += len(seg) + 1
    if not out:
        raise PoseParseError("empty sequence", 0)
    return out


def _parse_tuple(seg: str, start: int, tok: PoseTokenizer) -> PoseTuple:
    category, toks = _tokens(seg, start)
    end = start + len(seg)
    v, u = _take(toks, 0, ("loc", "loc"), tok, end)
    pose = _take(toks, 2, _POSE_GROUPS, tok, end)
    size = None
    if len(toks) > 8:
        size = tok.decode_size(np.array(_take(toks, 8, ("size",) * 3, tok, end)))
        if len(toks) > 11:
            raise PoseParseError("extra tokens after the tuple", toks[11][2])
    return PoseTuple(category, ((u + 0.5) / LOC_BINS, (v + 0.5) / LOC_BINS), _pose_from_bins(pose, tok), size)


def parse_tuples(text: str, tok: PoseTokenizer) -> list[PoseTuple]:
    """Parse model output strictly; raises PoseParseError (never anything else) on malformed text."""
    try:
        return [_parse_tuple(seg, start, tok) for seg, start in _segments(text)]
    except PoseParseError:
        raise
    except Exception as exc:  # any other fault in decoding is still a parse error for the caller
        raise PoseParseError(f"cannot decode: {exc}", 0) from exc


def parse_tuples_lenient(text: str, tok: PoseTokenizer) -> tuple[list[PoseTuple], list[PoseParseError]]:
    """Keep the well-formed tuples, collect the errors of the others."""
    good, errors = [], []
    try:
        segments = _segments(text)
    except PoseParseError as exc:
        return [], [exc]
    for seg, start in segments:
        try:
            good.append(_parse_tuple(seg, start, tok))
        except PoseParseError as exc:
            errors.append(exc)
        except Exception as exc:  # noqa: BLE001
            errors.append(PoseParseError(f"cannot decode: {exc}", start))
    return good, errors


def parse_trajectory(text: str, tok: PoseTokenizer) -> PoseTrajectory:
    try:
        (seg, start), *extra = _segments(text)
        if extra:
            raise PoseParseError("a trajectory has no ';' separators", start + len(seg))
        category, toks = _tokens(seg, start)
        if len(toks) == 0 or len(toks) % 6:
            raise PoseParseError(f"trajectory has {len(toks)} tokens, not a multiple of 6", start + len(seg))
        poses = [_pose_from_bins(_take(toks, i, _POSE_GROUPS, tok, start + len(seg)), tok)
                 for i in range(0, len(toks), 6)]
        return PoseTrajectory(category, poses)
    except PoseParseError:
        raise
    except Exception as exc:
        raise PoseParseError(f"cannot decode: {exc}", 0) from exc
