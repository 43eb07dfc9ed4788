"""deepzip: Deep Compression (Han, Mao, Dally, ICLR 2016) for PyTorch models.

trained model -> prune_ -> retrain -> quantize_ -> retrain -> save (.dzip) -> load_into -> model

The package follows that flow: `train` (registry, masks, k-means, parametrizations,
prune_, quantize_, sensitivity, export, post-training), `compressed` (the one object
between training and bytes), `codec` and `container` (bytes), `checkpoints` (model files
in and out), `runtime` (loading and sparse inference), `report` and `paper`.
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
from deepzip.runtime.load import SparseLinear, load, load_into
from deepzip.summary import Summary
from deepzip.train import sensitivity
from deepzip.train.export import export, save
from deepzip.train.parametrizations import load_state_dict, strip_
from deepzip.train.post_training import compress_state_dict, compress_tensor
from deepzip.train.prune import prune_
from deepzip.train.quantize import quantize_

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
    "Summary",
    "TruncatedError",
    "VersionError",
    "compress_state_dict",
    "compress_tensor",
    "export",
    "load",
    "load_into",
    "load_state_dict",
    "prune_",
    "quantize_",
    "save",
    "sensitivity",
    "strip_",
]
