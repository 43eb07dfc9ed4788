"""A stand-in `torchvision` for importing NNCodec only (benchmarks/peerlib/nncodec_peer.py).

NNCodec's package imports torchvision at import time for its dataset and training helpers
(ImageNet/CIFAR/VOC loaders, transforms, federated-learning code), none of which its
`nnc.compress` / `nnc.decompress` tensor API touches. The real torchvision fails to import
beside this torch build, so the benchmark puts this folder first on sys.path in the NNCodec
subprocess only. NNCodec builds a few transform pipelines at import time, so constructing a
stub object works; *calling* one (running a transform, a dataset, a model) raises, so a
code path that did need torchvision fails loudly instead of computing something wrong.
"""

from __future__ import annotations

import sys
import types

__version__ = "0.0.0+deepzip-benchmark-stub"


class _Unavailable:
    """Stands for any torchvision class or function: building one works, calling it raises."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        raise RuntimeError("torchvision is a stub in the deepzip peer benchmark; this NNCodec path needs the real one")


def _module_getattr(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Unavailable


# Submodules NNCodec imports by name (`from torchvision import datasets, transforms`,
# `torchvision.models.list_models`); each answers every attribute with _Unavailable.
for _name in ("datasets", "transforms", "models", "models.segmentation", "ops", "io", "utils"):
    _full = f"{__name__}.{_name}"
    _mod = types.ModuleType(_full)
    _mod.__getattr__ = _module_getattr  # PEP 562 module-level __getattr__
    sys.modules[_full] = _mod
    _parent = sys.modules[_full.rsplit(".", 1)[0]] if "." in _name else sys.modules[__name__]
    setattr(_parent, _name.rsplit(".", 1)[-1], _mod)

__getattr__ = _module_getattr
