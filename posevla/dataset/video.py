"""Video coding of camera streams with PyAV (FFmpeg): H.264 colour, lossless FFV1 16-bit depth.

Colour: libx264, 4:4:4 chroma (`yuv444p`), constant quality (`crf`), `tune=zerolatency` and no B-frames, so
every input frame yields exactly one packet at once (the writer stores packet i as frame i; a crash loses
no buffered frames) and decoding packet i yields frame i. A keyframe every `gop` frames bounds random
access: frame i is decoded from the keyframe at or before it (at most `gop` frames, (gop+1)/2 on average).
Chosen by measurement on this 2-core machine (640x480 textured frames with sensor noise, one thread, CPU
time per frame; benchmarks/bench_dataset.py for whole episodes):
    x264 ultrafast crf15 gop4   encode 3.0 ms, decode 2.1 ms, 42 kB/frame, PSNR 41.0 dB (min 40.2)   <- default
    x264 veryfast  crf13 gop4   encode 8.6 ms, decode 4.6 ms, 34 kB/frame, PSNR 40.8 dB (min 40.0)
    x264 veryfast  crf13 gop15  encode ~6 ms wall,             ~25 kB/frame, PSNR ~42 dB
    SVT-AV1 preset 12 crf 12    encode ~5.5 ms wall, decode 2.0 ms, 12 kB/frame, but only 36.5 dB: it
                                smooths the sensor noise away; lower crf costs more time than x264
    JPEG q90 (the old format)   encode ~2 ms, decode ~1.5 ms, ~51 kB/frame at 39.7 dB
  whole 10 s episodes, 3 cameras (bench_dataset; colour MB per 30 s, PSNR mean (min), encoder cores incl. depth):
    ultrafast crf15 gop4              85 MB, 42.2 (40.3) dB, 0.74 core   <- default
    veryfast  crf17 gop4 tune=psnr    38 MB, 41.4 (39.3) dB, 1.07 cores
    faster    crf18 gop4 tune=psnr    28 MB, 41.4 (39.1) dB, 1.25 cores
4:2:0 chroma capped x264 at ~38.6 dB on these frames, hence 4:4:4. `ultrafast` costs ~20 % more bytes than
`veryfast` but a third of the CPU: three cameras at 30 Hz then need ~0.6 core with depth instead of ~1.1,
which keeps up on a 2-core robot PC, and its frames decode twice as fast in the training loader.

Depth: FFV1 (level 3, range coder, 4 slices with CRCs), `gray16le`: lossless and bit-exact, every frame a
keyframe (random access is free), ~25 % smaller than shuffle+deflate on noisy stereo depth.

Packets are stored by the caller (HDF5 variable-length rows, see `posevla.dataset.format`); this module only
turns frames into packets and back, plus whole-file MP4 helpers for export (LeRobot, viewer).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.video.codeccontext import VideoCodecContext

COLOUR_ENCODERS = {"libx264": "h264"}  # encoder -> decoder
COLOUR_PIX_FMTS = ("yuv444p", "yuv420p")


def _video_context(codec: str, mode: Literal["r", "w"]) -> VideoCodecContext:
    """A video codec context (av types CodecContext.create as the base class)."""
    ctx = av.CodecContext.create(codec, mode)
    if not isinstance(ctx, VideoCodecContext):
        raise ValueError(f"codec {codec!r} is not a video codec")
    return ctx


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium")
X264_TUNES = ("none", "psnr", "ssim", "film", "grain")  # psycho-visual tuning, combined with zerolatency


@dataclass(frozen=True)
class ColourCodec:
    """How colour streams are encoded. Stored as HDF5 attributes beside the packets."""

    encoder: str = "libx264"
    pix_fmt: str = "yuv444p"
    crf: int = 15  # x264 constant quality: lower is better; 15 (ultrafast) gives >= 40 dB on textured, noisy frames
    preset: str = "ultrafast"
    gop: int = 4  # frames between keyframes: random access decodes at most this many frames
    tune: str = "none"  # x264 psycho-visual tuning ("psnr": no psy-rd/AQ, optimises the stored PSNR)

    def __post_init__(self) -> None:
        if self.encoder not in COLOUR_ENCODERS:
            raise ValueError(f"colour codec encoder={self.encoder!r}: one of {sorted(COLOUR_ENCODERS)}")
        if self.pix_fmt not in COLOUR_PIX_FMTS:
            raise ValueError(f"colour codec pix_fmt={self.pix_fmt!r}: one of {list(COLOUR_PIX_FMTS)}")
        if not 0 <= int(self.crf) <= 51:
            raise ValueError(f"colour codec crf={self.crf}: must be in 0..51")
        if self.preset not in X264_PRESETS:
            raise ValueError(f"colour codec preset={self.preset!r}: one of {list(X264_PRESETS)}")
        if not 1 <= int(self.gop) <= 300:
            raise ValueError(f"colour codec gop={self.gop}: must be in 1..300 frames")
        if self.tune not in X264_TUNES:
            raise ValueError(f"colour codec tune={self.tune!r}: one of {list(X264_TUNES)}")

    def to_attrs(self) -> dict:
        return {**asdict(self), "codec": COLOUR_ENCODERS[self.encoder]}

    @classmethod
    def from_attrs(cls, attrs) -> ColourCodec:
        return cls(str(attrs["encoder"]), str(attrs["pix_fmt"]), int(attrs["crf"]), str(attrs["preset"]), int(attrs["gop"]),
                   str(attrs.get("tune", "none")))  # episodes before `tune` existed were written without one


class ColourEncoder:
    """RGB frames (HxWx3 uint8) -> one H.264 packet each, immediately (no encoder delay)."""

    def __init__(self, width: int, height: int, spec: ColourCodec = ColourCodec(), fps: float = 30.0) -> None:
        if spec.pix_fmt == "yuv420p" and (width % 2 or height % 2):
            raise ValueError(f"colour codec pix_fmt=yuv420p needs an even image size, got {width}x{height}")
        self.spec, self.width, self.height = spec, width, height
        ctx = _video_context(spec.encoder, "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, spec.pix_fmt
        ctx.time_base = Fraction(1, 1000)
        ctx.framerate = Fraction(fps).limit_denominator(1001)
        ctx.gop_size = int(spec.gop)
        ctx.max_b_frames = 0
        ctx.thread_count = 1  # the writer runs one encoder per camera in parallel
        ctx.options = {"crf": str(spec.crf), "preset": spec.preset,
                       "tune": "zerolatency" if spec.tune == "none" else f"zerolatency,{spec.tune}"}
        self._ctx = ctx
        self._n = 0

    def encode(self, rgb: np.ndarray) -> tuple[bytes, bool]:
        """(packet bytes, is keyframe) for this frame."""
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"colour frame {rgb.shape} {rgb.dtype}: expected ({self.height}, {self.width}, 3) uint8")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=self.spec.pix_fmt)
        frame.pts = self._n
        packets = self._ctx.encode(frame)
        if len(packets) != 1:  # zerolatency + no B-frames guarantees one packet per frame
            raise RuntimeError(f"{self.spec.encoder} returned {len(packets)} packets for frame {self._n} (expected 1)")
        self._n += 1
        return bytes(packets[0]), bool(packets[0].is_keyframe)

    def close(self) -> None:
        try:
            self._ctx.encode(None)
        except (av.error.EOFError, ValueError):
            pass


class ColourDecoder:
    """Random access to frame i of a packet sequence: decode from the keyframe at or before i.

    Sequential reads (i, i+1, ...) continue the running decoder, so reading a whole episode decodes each
    frame once; a jump back or past the next keyframe restarts at the nearest keyframe."""

    def __init__(self, codec: str, width: int, height: int, packet: Callable[[int], bytes],
                 keyframes: np.ndarray, extradata: bytes | None = None) -> None:
        self.codec, self.width, self.height = codec, width, height
        self._packet = packet
        self.keyframe_index = np.flatnonzero(np.asarray(keyframes, bool))
        if self.keyframe_index.size == 0 or self.keyframe_index[0] != 0:
            raise ValueError("video stream does not start with a keyframe")
        self._n = len(keyframes)
        self._extradata = extradata
        self._ctx: VideoCodecContext | None = None
        self._next = -1  # index of the packet the running decoder takes next
        self._last: tuple[int, np.ndarray] | None = None
        self.frames_decoded = 0

    def _restart(self, start: int) -> None:
        ctx = _video_context(self.codec, "r")
        ctx.width, ctx.height = self.width, self.height
        ctx.thread_count = 1
        if self._extradata:
            ctx.extradata = self._extradata
        self._ctx, self._next = ctx, start

    def frame(self, i: int) -> np.ndarray:
        """RGB uint8 HxWx3 of frame i."""
        if not 0 <= i < self._n:
            raise IndexError(f"video frame {i} outside 0..{self._n - 1}")
        if self._last is not None and self._last[0] == i:
            return self._last[1].copy()
        key = int(self.keyframe_index[np.searchsorted(self.keyframe_index, i, side="right") - 1])
        if self._ctx is None or not key <= self._next <= i:
            self._restart(key)
        ctx = self._ctx
        assert ctx is not None  # _restart made it
        out: np.ndarray | None = None
        while self._next <= i:
            frames = ctx.decode(av.Packet(self._packet(self._next)))
            self.frames_decoded += len(frames)
            if len(frames) != 1:
                raise ValueError(f"video packet {self._next} decoded to {len(frames)} frames (expected 1)")
            if self._next == i:
                out = frames[0].to_ndarray(format="rgb24")
            self._next += 1
        assert out is not None  # the loop decoded frame i
        self._last = (i, out)
        return out.copy()


class DepthEncoder:
    """uint16 depth (HxW, raw depth_scale units) -> one lossless FFV1 packet per frame."""

    def __init__(self, width: int, height: int) -> None:
        ctx = av.CodecContext.create("ffv1", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "gray16le"
        ctx.time_base = Fraction(1, 1000)
        ctx.gop_size = 1  # FFV1 carries its coder state across non-key frames: every frame a keyframe
        ctx.thread_count = 1
        ctx.options = {"level": "3", "coder": "1", "context": "1", "slices": "4", "slicecrc": "1"}
        ctx.open()
        self.width, self.height = width, height
        self.extradata: bytes = bytes(ctx.extradata or b"")
        self._ctx, self._n = ctx, 0

    def encode(self, depth: np.ndarray) -> bytes:
        if depth.shape != (self.height, self.width) or depth.dtype != np.uint16:
            raise ValueError(f"depth frame {depth.shape} {depth.dtype}: expected ({self.height}, {self.width}) uint16")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(depth), format="gray16le")
        frame.pts = self._n
        packets = self._ctx.encode(frame)
        if len(packets) != 1 or not packets[0].is_keyframe:
            raise RuntimeError(f"ffv1 returned {len(packets)} packets for frame {self._n} (expected 1 keyframe)")
        self._n += 1
        return bytes(packets[0])

    def close(self) -> None:
        try:
            self._ctx.encode(None)
        except (av.error.EOFError, ValueError):
            pass


class DepthDecoder:
    """FFV1 packet -> uint16 HxW (every FFV1 frame is a keyframe: no state between frames)."""

    def __init__(self, width: int, height: int, extradata: bytes | None) -> None:
        ctx = av.CodecContext.create("ffv1", "r")
        ctx.width, ctx.height = width, height
        ctx.thread_count = 1
        if extradata:
            ctx.extradata = extradata
        self._ctx = ctx

    def decode(self, packet: bytes) -> np.ndarray:
        frames = self._ctx.decode(av.Packet(packet))
        if len(frames) != 1:
            raise ValueError(f"FFV1 packet decoded to {len(frames)} frames (expected 1)")
        return frames[0].to_ndarray(format="gray16le")


# ---------------------------------------------------------------------------------------------- files
def write_video_file(path: str | Path, frames: Iterable[np.ndarray], fps: float, *, depth: bool = False,
                     crf: int = 18, gop: int = 2, pix_fmt: str = "yuv420p") -> int:
    """Write frames to a video file (MP4 for export): RGB uint8 -> H.264 (`pix_fmt`, `crf`, keyframe every
    `gop`), or with depth=True uint16 -> lossless FFV1 gray16le. Returns the number of frames written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1" if depth else "libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.pix_fmt = "gray16le" if depth else pix_fmt
        stream.options = ({"level": "3", "coder": "1", "context": "1", "slices": "4", "g": "1"} if depth else
                          {"crf": str(crf), "g": str(gop), "bf": "0", "preset": "veryfast"})
        for arr in frames:
            if n == 0:
                stream.height, stream.width = arr.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="gray16le" if depth else "rgb24")
            frame.pts = n
            for packet in stream.encode(frame):
                container.mux(packet)
            n += 1
        for packet in stream.encode():
            container.mux(packet)
    return n


def read_video_file(path: str | Path, start_s: float = 0.0, end_s: float | None = None
                    ) -> Iterator[tuple[float, np.ndarray]]:
    """(timestamp s, frame) for frames with start_s <= t < end_s (RGB uint8, or uint16 for gray16le)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if start_s > 0:
            if stream.time_base is None:
                raise ValueError(f"{path}: video stream without a time base")
            container.seek(int(start_s / stream.time_base), stream=stream, backward=True, any_frame=False)
        eps = 0.5 / float(stream.average_rate or 30)
        for frame in container.decode(stream):
            t = float(frame.time)
            if t < start_s - eps:
                continue
            if end_s is not None and t >= end_s - eps:
                break
            fmt = "gray16le" if frame.format.name.startswith("gray16") else "rgb24"
            yield t, frame.to_ndarray(format=fmt)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of two uint8 images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)
