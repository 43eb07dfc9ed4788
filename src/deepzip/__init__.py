"""deepzip: Deep Compression (Han, Mao, Dally, ICLR 2016) for PyTorch models.

trained model -> prune_ -> retrain -> quantize_ -> retrain -> save (.dzip) -> load -> model
"""

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
from deepzip.train.parametrizations import load_state_dict, strip_
from deepzip.train.prune import prune_
from deepzip.train.quantize import quantize_
from deepzip.runtime.load import SparseLinear, load_into
from deepzip.train.export import load, save

__all__ = [
    "ChecksumError",
    "CodebookTensor",
    "CompressedModel",
    "ConfigError",
    "DataNotFoundError",
    "DeepzipError",
    "FormatError",
    "RawTensor",
    "SparseLinear",
    "load",
    "load_into",
    "load_state_dict",
    "prune_",
    "quantize_",
    "save",
    "strip_",
    "TruncatedError",
    "VersionError",
]
