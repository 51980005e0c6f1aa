"""The whole hand-eye solve: view checks -> observability -> consensus -> closed form -> refinement -> trimming
-> uncertainty. Every refusal is a ValueError whose message says why and what to do; nothing else escapes.

Steps (views are (T_base_tcp, BoardView) samples in recording order):
1. Views that failed their own checks (`posevla.calibration.views`) are dropped with their reason.
2. The robot motions of the remaining views must determine X (`posevla.calibration.observability`).
3. Consensus (RANSAC over views): OpenCV Park on random half-size subsets; each candidate X maps every view to
   its estimate of the constant board pose Y; views within `consensus_mm` / `consensus_deg` (25 mm / 3 deg:
   10x what 1 px of corner noise moves a view at 0.4 m, far below what a wrong pose or a moving arm gives)
   of the robust centre are inliers; the candidate with the lowest truncated cost wins. Outliers are dropped
   with their distance.
4. All four OpenCV solvers on the inliers; each is scored by the reprojection RMS of every corner under
   (X, mean Y); the best starts the refinement (`posevla.calibration.refine`).
5. Residual-based trimming: while the worst view's reprojection RMS exceeds both `trim_factor` (3) x the
   median view RMS and `trim_min_px` (2 px), it is dropped (at most `max_trim_fraction` = 30 % of the views
   overall) and the refinement is redone. The motions are checked again on what remains.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from posevla.calibration.handeye import (
    METHODS,
    MIN_SAMPLES,
    HandEyeResult,
    check_observable,
    closed_form,
    residuals,
)
from posevla.calibration.observability import Observability
from posevla.calibration.refine import Refined, constant_part, mean_constant, refine, view_rms
from posevla.calibration.views import BoardView
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics


@dataclass
class SolverRow:
    """One line of the side-by-side report; X is None when the solver was refused (note says why)."""

    name: str
    X: np.ndarray | None
    rms_px: float = float("nan")  # reprojection RMS over all corners of the used views under (X, Y)
    spread_mm: float = float("nan")  # median residual (board pose spread) over the used views
    spread_deg: float = float("nan")
    note: str = ""


@dataclass
class CalibrationReport:
    kind: str
    X: np.ndarray  # refined T_tcp_cam (eye-in-hand) or T_base_cam (eye-to-hand)
    Y: np.ndarray  # refined board pose: T_base_target (eye-in-hand) or T_tcp_target (eye-to-hand)
    refined: Refined
    start: str  # the closed-form solver the refinement started from
    solvers: list[SolverRow]  # the closed-form solvers and "refined", all on the final views
    observability: Observability
    used: list[int]  # indices (into the samples given) of the views used
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)
    result: HandEyeResult | None = None  # the refined X's residual spread (the legacy summary)

    @property
    def sigma_translation_mm(self) -> np.ndarray:
        return self.refined.sigma_translation_mm

    @property
    def sigma_rotation_deg(self) -> np.ndarray:
        return self.refined.sigma_rotation_deg


def _robust_spread(kind: str, robot: list[np.ndarray], cams: list[np.ndarray], X: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per view distance (mm, deg) of its Y estimate from a robust centre (coordinate median; rotation mean
    of the 60 % closest)."""
    C = np.stack([constant_part(kind, a, X, b) for a, b in zip(robot, cams)])
    t0 = np.median(C[:, :3, 3], axis=0)
    rots = Rotation.from_matrix(C[:, :3, :3])
    r0 = rots.mean()
    for _ in range(2):
        ang = (rots * r0.inv()).magnitude()
        keep = ang <= np.quantile(ang, 0.6)
        r0 = rots[np.flatnonzero(keep)].mean()
    return np.linalg.norm(C[:, :3, 3] - t0, axis=1) * 1e3, np.rad2deg((rots * r0.inv()).magnitude())


def consensus(kind: str, robot: list[np.ndarray], cams: list[np.ndarray], consensus_mm: float = 25.0,
              consensus_deg: float = 3.0, trials: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inlier mask, dt mm, dr deg) of the best RANSAC candidate (see the module docstring)."""
    n = len(robot)
    rng = np.random.default_rng(seed)
    subsets = [np.arange(n)]
    if n >= 6:
        k = max(4, (n + 1) // 2)
        subsets += [np.sort(rng.choice(n, k, replace=False)) for _ in range(trials)]
    best = None
    for sub in subsets:
        X = closed_form(kind, [robot[i] for i in sub], [cams[i] for i in sub], ("park",))["park"]
        if isinstance(X, str):
            continue
        with np.errstate(all="ignore"):
            dt, dr = _robust_spread(kind, robot, cams, X)
        if not (np.all(np.isfinite(dt)) and np.all(np.isfinite(dr))):
            continue
        cost = np.minimum((dt / consensus_mm) ** 2 + (dr / consensus_deg) ** 2, 1.0).sum()
        if best is None or cost < best[0]:
            best = (cost, dt, dr)
    if best is None:
        return np.ones(n, bool), np.zeros(n), np.zeros(n)
    _, dt, dr = best
    return (dt / consensus_mm) ** 2 + (dr / consensus_deg) ** 2 < 1.0, dt, dr


def calibrate(kind: str, T_base_tcp: list[np.ndarray], views: list[BoardView], intr: CameraIntrinsics,
              consensus_mm: float = 25.0, consensus_deg: float = 3.0, trim_factor: float = 3.0,
              trim_min_px: float = 2.0, max_trim_fraction: float = 0.3) -> CalibrationReport:
    """Hand-eye calibration from samples (robot pose, checked board view); see the module docstring."""
    if kind not in ("eye_in_hand", "eye_to_hand"):
        raise ValueError(f"kind {kind!r} must be eye_in_hand or eye_to_hand")
    if len(T_base_tcp) != len(views):
        raise ValueError(f"{len(T_base_tcp)} TCP poses but {len(views)} board views")
    rejected: list[tuple[int, str]] = []
    used = []
    for i, (T, v) in enumerate(zip(T_base_tcp, views)):
        T = np.asarray(T, float)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)) or not se3.is_rigid(T, 1e-6):
            rejected.append((i, "TCP pose is not a finite rigid transform"))
        elif not v.ok:
            rejected.append((i, str(v.reason)))
        else:
            used.append(i)
    n_in = len(used)

    def need(what: str) -> None:
        if len(used) < MIN_SAMPLES:
            reasons = "; ".join(f"#{i}: {r}" for i, r in rejected[:8]) + (" ..." if len(rejected) > 8 else "")
            raise ValueError(f"{what}: {len(used)} usable views left, hand-eye calibration needs at least "
                             f"{MIN_SAMPLES} (15+ in practice). Rejected: {reasons or 'none'}")

    need("too few usable board views")
    robot = lambda idx: [np.asarray(T_base_tcp[i], float) for i in idx]  # noqa: E731
    cams = lambda idx: [views[i].T_cam_target for i in idx]  # noqa: E731
    check_observable(kind, robot(used))

    inl, dt, dr = consensus(kind, robot(used), cams(used), consensus_mm, consensus_deg)
    if inl.sum() >= MIN_SAMPLES and (~inl).sum() <= max_trim_fraction * n_in:
        for k in np.flatnonzero(~inl):
            rejected.append((used[k], f"board pose disagrees with the other views' consensus by {dt[k]:.0f} mm / "
                                      f"{dr[k]:.1f} deg (tolerance {consensus_mm:g} mm and {consensus_deg:g} deg "
                                      "combined): moving arm, wrong detection or a bumped board?"))
        used = [u for u, ok in zip(used, inl) if ok]
        check_observable(kind, robot(used))

    obj = lambda idx: [views[i].obj for i in idx]  # noqa: E731
    img = lambda idx: [views[i].img for i in idx]  # noqa: E731

    def solve(idx: list[int]) -> tuple[str, dict[str, np.ndarray | str], Refined]:
        cf = closed_form(kind, robot(idx), cams(idx))
        scored = []
        for name, X in cf.items():
            if isinstance(X, str):
                continue
            Y = mean_constant(kind, robot(idx), X, cams(idx))
            with np.errstate(all="ignore"):
                e = view_rms(kind, robot(idx), obj(idx), img(idx), intr, X, Y)
            if np.all(np.isfinite(e)):
                scored.append((float(np.sqrt(np.mean(e ** 2))), name, X, Y))
        if not scored:
            raise ValueError("every hand-eye solver failed (" + "; ".join(f"{k}: {v}" for k, v in cf.items()
                                                                          if isinstance(v, str)) + ")")
        _, name, X, Y = min(scored, key=lambda s: s[0])
        return name, cf, refine(kind, robot(idx), obj(idx), img(idx), intr, X, Y)

    start, cf, ref = solve(used)
    while len(used) > MIN_SAMPLES:
        worst = int(np.argmax(ref.view_rms_px))
        med = float(np.median(ref.view_rms_px))
        bad = ref.view_rms_px[worst]
        if bad <= max(trim_factor * med, trim_min_px) or n_in - len(used) + 1 > max_trim_fraction * n_in:
            break
        rejected.append((used[worst], f"hand-eye reprojection RMS {bad:.1f} px > {trim_factor:g} x the median "
                                      f"{med:.2f} px: the view disagrees with the others"))
        used = used[:worst] + used[worst + 1:]
        check_observable(kind, robot(used))
        start, cf, ref = solve(used)
    need("too few views left after trimming")
    obs = check_observable(kind, robot(used))

    rows = []
    for name in METHODS:
        X = cf.get(name)
        if isinstance(X, str) or X is None:
            rows.append(SolverRow(name, None, note=str(X)))
            continue
        Y = mean_constant(kind, robot(used), X, cams(used))
        e = view_rms(kind, robot(used), obj(used), img(used), intr, X, Y)
        sdt, sdr = residuals(kind, robot(used), cams(used), X)
        rows.append(SolverRow(name, X, float(np.sqrt(np.mean(e ** 2))), float(np.median(sdt)), float(np.median(sdr)),
                              "start" if name == start else ""))
    sdt, sdr = residuals(kind, robot(used), cams(used), ref.X)
    rows.append(SolverRow("refined", ref.X, ref.rms_px, float(np.median(sdt)), float(np.median(sdr)),
                          f"from {start}, {ref.iterations} evaluations"))
    return CalibrationReport(kind, ref.X, ref.Y, ref, start, rows, obs, used, sorted(rejected),
                             HandEyeResult(ref.X, "refined", sdt, sdr))
