"""Mixed precision as one knob: ``train.precision`` = auto | fp32 | bf16 | fp16.

- ``auto``: bf16 autocast on a CUDA device that supports it, fp32 elsewhere (CPU training stays
  exact and comparable; ask for ``bf16`` explicitly to use CPU autocast).
- ``bf16``: autocast to bfloat16. Its exponent range equals fp32's, so no loss scaling is needed.
- ``fp16``: autocast to float16 plus a GradScaler (fp16 gradients underflow without scaling).
Weights, optimizer state and the EMA stay fp32 in every mode.
"""

from __future__ import annotations

import contextlib

import attrs
import torch

from madkit.errors import ConfigError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@attrs.frozen
class Precision:
    name: str  # fp32 | bf16 | fp16, after resolving auto
    device_type: str  # cuda | cpu | ...

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for plain fp32."""
        return _DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Enabled only for fp16; a disabled scaler passes every call straight through."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def resolve_precision(knob: str, device: torch.device) -> Precision:
    """The precision for ``knob`` on ``device``; raises naming ``train.precision`` when impossible."""
    device = torch.device(device)
    if knob == "auto":
        bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return Precision("bf16" if bf16_ok else "fp32", device.type)
    if knob not in _DTYPES:
        raise ConfigError(f"train.precision: unknown value {knob!r}; use auto, fp32, bf16 or fp16")
    if knob == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"train.precision = 'bf16' but {torch.cuda.get_device_name(device)} has no bf16 support; "
            "use 'fp16' or 'auto'"
        )
    return Precision(knob, device.type)
