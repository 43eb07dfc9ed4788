"""Real checkpoints in and out: safetensors files, torch state dicts and transformers directories.

read_checkpoint -> compress_checkpoint -> container.write (.dzip) -> container.read ->
write_checkpoint. `read` loads a checkpoint without ever executing code, `ties` finds the
tensors that are one tensor under several names, `compress` applies a recipe's settings,
and `write` decodes a CompressedModel back to files, atomically.
"""

from deepzip.checkpoints.compress import compress_checkpoint
from deepzip.checkpoints.read import Checkpoint, read_checkpoint
from deepzip.checkpoints.write import target_kind, write_checkpoint
from deepzip.limits import MAX_ATTACHED_FILE_BYTES
from deepzip.train.ties import group_tied

__all__ = [
    "Checkpoint",
    "MAX_ATTACHED_FILE_BYTES",
    "compress_checkpoint",
    "group_tied",
    "read_checkpoint",
    "target_kind",
    "write_checkpoint",
]
