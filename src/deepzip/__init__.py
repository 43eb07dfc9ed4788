"""deepzip: Deep Compression (Han, Mao, Dally, ICLR 2016) for PyTorch models.

trained model -> prune_ -> retrain -> quantize_ -> retrain -> save (.dzip) -> load_into -> model

The package follows that flow: `train` (registry, masks, k-means, parametrizations,
prune_, quantize_, sensitivity, export, post-training), `compressed` (the one object
between training and bytes), `codec` and `container` (bytes), `checkpoints` (model files
in and out), `runtime` (loading and sparse inference), `report` and `paper`.

The public names are loaded on first use (PEP 562), so that `deepzip info` and
`import deepzip.errors` do not pay for importing torch and numba.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deepzip.lazy import loader

_EXPORTS = {
    "CodebookTensor": "deepzip.compressed",
    "CompressedModel": "deepzip.compressed",
    "RawTensor": "deepzip.compressed",
    "ChecksumError": "deepzip.errors",
    "ConfigError": "deepzip.errors",
    "DataNotFoundError": "deepzip.errors",
    "DeepzipError": "deepzip.errors",
    "FormatError": "deepzip.errors",
    "TruncatedError": "deepzip.errors",
    "VersionError": "deepzip.errors",
    "SparseConv2d": "deepzip.runtime.load",
    "SparseLinear": "deepzip.runtime.load",
    "load": "deepzip.runtime.load",
    "load_into": "deepzip.runtime.load",
    "Summary": "deepzip.summary",
    "export": "deepzip.train.export",
    "save": "deepzip.train.export",
    "load_state_dict": "deepzip.train.parametrizations",
    "strip_": "deepzip.train.parametrizations",
    "compress_state_dict": "deepzip.train.post_training",
    "compress_tensor": "deepzip.train.post_training",
    "prune_": "deepzip.train.prune",
    "quantize_": "deepzip.train.quantize",
}
_MODULES = {"sensitivity": "deepzip.train.sensitivity"}

__all__ = sorted([*_EXPORTS, *_MODULES])


__getattr__ = loader("deepzip", globals(), _EXPORTS, _MODULES)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:
    from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
    from deepzip.errors import (
        ChecksumError,
        ConfigError,
        DataNotFoundError,
        DeepzipError,
        FormatError,
        TruncatedError,
        VersionError,
    )
    from deepzip.runtime.load import SparseConv2d, SparseLinear, load, load_into
    from deepzip.summary import Summary
    from deepzip.train import sensitivity
    from deepzip.train.export import export, save
    from deepzip.train.parametrizations import load_state_dict, strip_
    from deepzip.train.post_training import compress_state_dict, compress_tensor
    from deepzip.train.prune import prune_
    from deepzip.train.quantize import quantize_
