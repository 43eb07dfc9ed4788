"""torch's dtypes for the format's dtype codes (container/spec.py names them without torch)."""

from __future__ import annotations

import torch

from deepzip.container.spec import DTYPE_NAMES

DTYPES: dict[int, torch.dtype] = {code: getattr(torch, name) for code, name in DTYPE_NAMES.items()}
DTYPE_CODES: dict[torch.dtype, int] = {dtype: code for code, dtype in DTYPES.items()}
