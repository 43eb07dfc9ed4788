"""Real checkpoints in and out: safetensors files, torch state dicts and transformers directories.

open_checkpoint (lazy, one tensor at a time) or read_checkpoint (whole) ->
compress_checkpoint -> container.write (.dzip) -> container.read -> write_checkpoint or
write_sharded (one tensor in memory at a time). `read` loads a checkpoint without ever
executing code, `directory` walks a model directory without following links out of it,
`ties` finds the tensors that are one tensor under several names, `compress` applies a
recipe's settings, and `write` decodes a CompressedModel back to files, atomically.
"""

from deepzip.checkpoints.compress import compress_checkpoint
from deepzip.checkpoints.read import (
    Checkpoint,
    CheckpointSource,
    open_checkpoint,
    read_checkpoint,
)
from deepzip.checkpoints.write import (
    plan_shards,
    target_kind,
    write_checkpoint,
    write_sharded,
)
from deepzip.limits import MAX_ATTACHED_FILE_BYTES
from deepzip.train.ties import group_tied

__all__ = [
    "MAX_ATTACHED_FILE_BYTES",
    "Checkpoint",
    "CheckpointSource",
    "compress_checkpoint",
    "group_tied",
    "open_checkpoint",
    "plan_shards",
    "read_checkpoint",
    "target_kind",
    "write_checkpoint",
    "write_sharded",
]
