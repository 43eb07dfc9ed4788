"""Every limit deepzip enforces, in one place: the writer, the reader and the settings share them.

The format's limits (docs/FORMAT.md, "Limits") bound what a reader allocates before it
trusts a file; the settings' limits keep users inside what the format can store.
"""

# ---------------------------------------------------------------- settings
MAX_BITS = 12  # codebook of 4096 centroids: past that, a codebook no longer shares much
MAX_CODEBOOK = 1 << MAX_BITS
MAX_INDEX_BITS = 12  # relative-index (gap) width; the paper uses 4-8

# ---------------------------------------------------------------- the .dzip container
MAX_HEADER_SIZE = 64 << 20
MAX_NAME_BYTES = 1024
MAX_NDIM = 8
MAX_NUMEL = 1 << 40
MAX_FILE_NAME_PARTS = 16
# What a file may decode to, in all, unless the caller says otherwise: a small valid file
# can declare a tensor of 65,000x its size (fillers cost 2 bits each), so readers refuse
# a file above this before allocating (settable: max_decoded_size=, --max-decoded-size).
DEFAULT_MAX_DECODED_SIZE = 64 << 30

# ---------------------------------------------------------------- checkpoints
# Attached files travel inside the .dzip and are held in memory: tokenizers of large
# vocabularies reach 35 MB (Gemma 3), anything bigger is not a small side file.
MAX_ATTACHED_FILE_BYTES = 64 << 20

# Safetensors shards written by `decompress`: transformers' own default size, and a floor
# below which more shards only multiply files and headers.
DEFAULT_SHARD_BYTES = 5 * 10**9
MIN_SHARD_BYTES = 1 << 20
