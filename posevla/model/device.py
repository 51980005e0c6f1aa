"""Device and dtype selection in one place: CUDA bfloat16 when available, else CPU float32."""
from __future__ import annotations

import torch


def select_device(preference: str | None = None) -> tuple[torch.device, torch.dtype]:
    """'auto'/None -> cuda (bf16 if supported, else fp16) when present, else cpu float32; or an explicit device."""
    pref = (preference or "auto").strip().lower()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(pref)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {preference!r} requested but CUDA is not available")
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32
