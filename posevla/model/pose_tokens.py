"""Discrete pose tokens: <rot_k>, <trans_xy_k>, <trans_z_k>, <size_k>, k = 0..N-1 (N = 1024 by default).

Rotation: uniform bins over extrinsic-xyz Euler angles in [-pi, pi) (radians). Translation x and y share one
bin set, z (depth along the optical axis) has its own, size has its own. Those are fitted from data as
equal-frequency (quantile) bins, so bin width is inversely proportional to data density and every token is
used about equally often. Values outside the fitted range clamp to the end bins. Decoding returns the
bin centre: the midpoint of the bin's two edges. All poses are in a camera optical frame, metres.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
GROUPS = ("rot", "trans_xy", "trans_z", "size")


def _quantile_edges(values: np.ndarray, num_bins: int, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size < 2:
        raise ValueError(f"need at least 2 finite {what} values to fit bins, got {v.size}")
    edges = np.quantile(v, np.linspace(0.0, 1.0, num_bins + 1))
    # Repeated values give repeated edges; nudge them apart so every bin has positive width.
    span = max(edges[-1] - edges[0], 1e-6)
    eps = span * 1e-9
    for i in range(1, edges.size):
        if edges[i] <= edges[i - 1]:
            edges[i] = edges[i - 1] + eps
    return edges


@dataclass
class PoseTokenizer:
    """Bins for the four pose-token groups; fit() the fitted groups before encoding translations/sizes."""

    num_bins: int = 1024
    edges: dict[str, np.ndarray] = field(default_factory=dict)  # trans_xy, trans_z, size -> (N+1,)

    def __post_init__(self) -> None:
        if self.num_bins < 2:
            raise ValueError(f"num_bins={self.num_bins} must be >= 2")

    # ------------------------------------------------------------------ fitting
    def fit(self, translations: np.ndarray, sizes: np.ndarray | None = None) -> PoseTokenizer:
        """Fit quantile bins: translations (N,3) metres (x and y pooled, z alone); sizes (M,3) metres."""
        t = np.asarray(translations, dtype=np.float64).reshape(-1, 3)
        self.edges["trans_xy"] = _quantile_edges(t[:, :2], self.num_bins, "translation x/y")
        self.edges["trans_z"] = _quantile_edges(t[:, 2], self.num_bins, "translation z")
        if sizes is not None:
            self.edges["size"] = _quantile_edges(sizes, self.num_bins, "size")
        elif "size" not in self.edges:
            self.edges["size"] = np.linspace(0.0, 1.0, self.num_bins + 1)  # 0..1 m until fitted
        return self

    def with_default_edges(self) -> PoseTokenizer:
        """Uniform edges over typical camera-frame ranges (x, y in [-1, 1] m, z in [0, 3] m, size in [0, 1] m),
        for a model that has not seen data yet; training refits them with fit()."""
        n = self.num_bins + 1
        self.edges.setdefault("trans_xy", np.linspace(-1.0, 1.0, n))
        self.edges.setdefault("trans_z", np.linspace(0.0, 3.0, n))
        self.edges.setdefault("size", np.linspace(0.0, 1.0, n))
        return self

    @property
    def is_fitted(self) -> bool:
        return "trans_xy" in self.edges and "trans_z" in self.edges

    def _need(self, group: str) -> np.ndarray:
        if group not in self.edges:
            raise ValueError(f"pose tokenizer has no fitted bins for {group!r}; call fit() or load() first")
        return self.edges[group]

    # ------------------------------------------------------------------ generic bins
    @staticmethod
    def _encode(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
        return np.searchsorted(edges[1:-1], np.asarray(x, dtype=np.float64), side="right").astype(np.int64)

    @staticmethod
    def _decode(edges: np.ndarray, b: np.ndarray) -> np.ndarray:
        b = np.asarray(b, dtype=np.int64)
        if np.any((b < 0) | (b >= edges.size - 1)):
            raise ValueError(f"bin index out of range 0..{edges.size - 2}")
        return 0.5 * (edges[b] + edges[b + 1])

    # ------------------------------------------------------------------ rotation (uniform)
    def encode_rotation(self, euler: np.ndarray) -> np.ndarray:
        e = np.asarray(euler, dtype=np.float64)
        wrapped = np.mod(e + np.pi, 2 * np.pi)  # [0, 2pi)
        return np.minimum((wrapped / (2 * np.pi) * self.num_bins).astype(np.int64), self.num_bins - 1)

    def decode_rotation(self, bins: np.ndarray) -> np.ndarray:
        b = np.asarray(bins, dtype=np.int64)
        if np.any((b < 0) | (b >= self.num_bins)):
            raise ValueError(f"rotation bin out of range 0..{self.num_bins - 1}")
        return -np.pi + (b + 0.5) * (2 * np.pi / self.num_bins)

    # ------------------------------------------------------------------ translation / size (quantile)
    def encode_translation(self, xyz: np.ndarray) -> np.ndarray:
        t = np.asarray(xyz, dtype=np.float64)
        out = np.empty(t.shape, dtype=np.int64)
        out[..., :2] = self._encode(self._need("trans_xy"), t[..., :2])
        out[..., 2] = self._encode(self._need("trans_z"), t[..., 2])
        return out

    def decode_translation(self, bins: np.ndarray) -> np.ndarray:
        b = np.asarray(bins, dtype=np.int64)
        out = np.empty(b.shape, dtype=np.float64)
        out[..., :2] = self._decode(self._need("trans_xy"), b[..., :2])
        out[..., 2] = self._decode(self._need("trans_z"), b[..., 2])
        return out

    def encode_size(self, size: np.ndarray) -> np.ndarray:
        return self._encode(self._need("size"), size)

    def decode_size(self, bins: np.ndarray) -> np.ndarray:
        return self._decode(self._need("size"), bins)

    def bin_bounds(self, group: str, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper edge of bins of a fitted group (for tests and diagnostics)."""
        e = self._need(group)
        b = np.asarray(bins, dtype=np.int64)
        return e[b], e[b + 1]

    # ------------------------------------------------------------------ tokens
    def token(self, group: str, k: int) -> str:
        return f"<{group}_{int(k)}>"

    def token_strings(self) -> list[str]:
        """All pose tokens in a fixed order: rot, trans_xy, trans_z, size; each 0..N-1."""
        return [f"<{g}_{k}>" for g in GROUPS for k in range(self.num_bins)]

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        data = {"format_version": FORMAT_VERSION, "num_bins": self.num_bins,
                "edges": {g: e.tolist() for g, e in self.edges.items()}}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> PoseTokenizer:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ValueError(f"pose bins file {path} does not exist") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"pose bins file {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"pose bins file {path}: top level must be a mapping")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"pose bins file {path}: field format_version={data.get('format_version')!r}, "
                             f"expected {FORMAT_VERSION}")
        n = data.get("num_bins")
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"pose bins file {path}: field num_bins={n!r} must be an integer >= 2")
        tok = cls(num_bins=n)
        for g, e in (data.get("edges") or {}).items():
            arr = np.asarray(e, dtype=np.float64)
            if g not in GROUPS[1:]:
                raise ValueError(f"pose bins file {path}: unknown field edges.{g}")
            if arr.shape != (n + 1,) or not np.all(np.isfinite(arr)) or np.any(np.diff(arr) <= 0):
                raise ValueError(f"pose bins file {path}: field edges.{g} must be {n + 1} strictly increasing "
                                 "finite numbers")
            tok.edges[g] = arr
        return tok
