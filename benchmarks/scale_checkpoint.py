"""Synthetic checkpoints for benchmarks/scale.py, built without holding a model in memory.

- `plan_llama` + `build_llama`: a transformers directory shaped like Llama (config.json for
  a LlamaConfig, Llama's tensor names, sharded safetensors with their index), fp16/bf16/fp32
  values ~ N(0, 0.02) (norm weights 1.0, as Llama initializes them) drawn tensor by tensor,
  a few rows at a time, from one seeded torch.Generator, and streamed to disk: the
  safetensors files are written by hand (8-byte header length, JSON header, data), so the
  builder's memory stays at one chunk whatever the model's size.
- `build_raw`: one safetensors file holding one fp32 tensor (past 4 GiB at full size).
- `tensor_digest`, `file_sha256`: sha256 of one tensor's bytes in a safetensors file, or of
  a whole file, read 64 MB at a time (never a whole tensor in memory).
- `python scale_checkpoint.py verify ORIGINAL DECODED --bits N` (run by scale.py in its own
  process): transformers loads DECODED, every tensor has the original's name, shape and
  dtype, and a sample of rows of each 2-D tensor holds at most 2**N distinct values close
  to the original's; prints one JSON line.

Built directories are cached: `ensure_built` reuses one whose manifest (written beside it,
after the build) matches, so the manifest never travels into a .dzip as an attached file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

DTYPES = {"fp16": ("F16", "float16", 2), "bf16": ("BF16", "bfloat16", 2), "fp32": ("F32", "float32", 4)}
LLAMA = {"hidden_size": 4096, "intermediate_size": 11008, "vocab_size": 65536, "num_attention_heads": 32}
CHUNK_ELEMENTS = 1 << 25  # 32 M elements per generated chunk: 128 MB of fp32 at most
READ_CHUNK = 64 << 20
FORMAT_VERSION = 1  # bump when what is built changes, so cached builds are rebuilt


@dataclass(frozen=True)
class LlamaSpec:
    """A Llama-shaped model: its widths, depth, dtype, sharding and seed."""

    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_attention_heads: int
    num_hidden_layers: int
    dtype: str
    shards: int
    seed: int = 0

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every tensor, in LlamaForCausalLM's order."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        names = [("model.embed_tokens.weight", (v, h))]
        for n in range(self.num_hidden_layers):
            p = f"model.layers.{n}."
            names += [(p + f"self_attn.{x}_proj.weight", (h, h)) for x in "qkvo"]
            names += [(p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)), (p + "mlp.down_proj.weight", (h, i))]
            names += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
        return names + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]

    def parameters(self) -> int:
        """Total number of elements."""
        return sum(math.prod(shape) for _, shape in self.tensors())

    def shard_names(self) -> list[str]:
        """model-00001-of-0000N.safetensors, ..."""
        return [f"model-{k + 1:05d}-of-{self.shards:05d}.safetensors" for k in range(self.shards)]

    def manifest(self) -> dict:
        """What identifies a build: the spec and the builder's version."""
        return {"kind": "llama", "format_version": FORMAT_VERSION, **asdict(self), "parameters": self.parameters()}


def plan_llama(params: float, dtype: str, shards: int, seed: int = 0) -> LlamaSpec:
    """Llama's widths (hidden 4096, vocab 65536) with the depth that brings the total closest
    to `params`; below ~1.2e9 (fewer than 2 layers) the widths are halved until 2 fit, so a
    small run still has the same structure."""
    for div in (1, 2, 4, 8, 16):
        h, i, v = LLAMA["hidden_size"] // div, LLAMA["intermediate_size"] // div, LLAMA["vocab_size"] // div
        per_layer, fixed = 4 * h * h + 3 * h * i + 2 * h, 2 * v * h + h
        layers = round((params - fixed) / per_layer)
        if layers >= 2:
            return LlamaSpec(h, i, v, LLAMA["num_attention_heads"], layers, dtype, shards, seed)
    raise ValueError(f"{params:g} is too small for a Llama-shaped model of 2 layers (at least ~3.3e6)")


def _safetensors_header(entries: list[tuple[str, tuple[int, ...], str]]) -> tuple[bytes, int]:
    """The header bytes (length + JSON, padded to 8) and the data size for (name, shape, dtype)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, dtype in entries:
        code, _, size = DTYPES[dtype]
        end = offset + math.prod(shape) * size
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def _chunks(shape: tuple[int, ...], dtype: str, generator, std: float | None):
    """Bytes of a tensor, a few rows at a time: N(0, std) draws, or ones where std is None."""
    import torch

    torch_dtype = getattr(torch, DTYPES[dtype][1])
    cols = shape[-1] if len(shape) > 1 else 1
    rows = math.prod(shape) // cols
    step = max(1, CHUNK_ELEMENTS // cols)
    for start in range(0, rows, step):
        count = min(step, rows - start)
        if std is None:
            chunk = torch.ones(count * cols, dtype=torch_dtype)
        else:
            chunk = torch.randn(count * cols, generator=generator).mul_(std).to(torch_dtype)
        yield chunk.view(torch.uint8).numpy().data


def write_safetensors(path: Path, entries: list[tuple[str, tuple[int, ...], str]], generator, std) -> int:
    """Stream `entries` into a safetensors file at `path`; `std(name)` gives each tensor's
    scale (None: ones). Returns the file's size."""
    header, size = _safetensors_header(entries)
    with open(path, "wb") as f:
        f.write(header)
        for name, shape, dtype in entries:
            f.writelines(_chunks(shape, dtype, generator, std(name)))
    return len(header) + size


def _assign_shards(spec: LlamaSpec) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Consecutive tensors into spec.shards groups of about equal bytes."""
    tensors = spec.tensors()
    total = sum(math.prod(s) for _, s in tensors)
    groups: list[list] = [[] for _ in range(spec.shards)]
    done = 0
    for name, shape in tensors:
        n = math.prod(shape)
        groups[min(spec.shards - 1, int((done + n / 2) * spec.shards / total))].append((name, shape))
        done += n
    if any(not g for g in groups):
        raise ValueError(f"{spec.shards} shards for {len(tensors)} tensors leaves a shard empty")
    return groups


def build_llama(spec: LlamaSpec, out: Path, log) -> None:
    """Write the transformers directory for `spec` at `out` (built aside, renamed at the end)."""
    import torch
    from transformers import LlamaConfig

    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = LlamaConfig(
        hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size, vocab_size=spec.vocab_size,
        num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_attention_heads,
        num_hidden_layers=spec.num_hidden_layers, tie_word_embeddings=False, architectures=["LlamaForCausalLM"],
    )  # fmt: skip
    fields = json.loads(config.to_json_string())
    fields["dtype"] = fields["torch_dtype"] = DTYPES[spec.dtype][1]  # transformers 5 reads "dtype", 4.x "torch_dtype"
    (tmp / "config.json").write_text(json.dumps(fields, indent=2) + "\n")
    generator = torch.Generator().manual_seed(spec.seed)
    weight_map, total = {}, 0
    for shard, group in zip(spec.shard_names(), _assign_shards(spec)):
        log(f"  writing {shard}: {len(group)} tensors")
        entries = [(name, shape, spec.dtype) for name, shape in group]
        write_safetensors(tmp / shard, entries, generator, lambda name: None if name.endswith("norm.weight") else 0.02)
        total += sum(math.prod(s) * DTYPES[spec.dtype][2] for _, s in group)
        weight_map.update({name: shard for name, _ in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def build_raw(elements: int, out: Path, log, seed: int = 0) -> None:
    """One safetensors file at `out` with one fp32 tensor 'weight' of shape (elements/1000, 1000)."""
    import torch

    log(f"  writing {out.name}: one fp32 tensor of {elements:,} elements ({elements * 4 / 2**30:.2f} GiB)")
    tmp = out.with_name(out.name + ".building")
    write_safetensors(tmp, [("weight", (elements // 1000, 1000), "fp32")], torch.Generator().manual_seed(seed), lambda _: 1.0)
    os.replace(tmp, out)


def ensure_built(path: Path, manifest: dict, build, log) -> bool:
    """Build at `path` unless a build with the same manifest is there; True if it was reused."""
    manifest_path = path.with_name(path.name + ".manifest.json")
    try:
        if path.exists() and json.loads(manifest_path.read_text()) == manifest:
            log(f"reusing {path} (manifest matches)")
            return True
    except (OSError, ValueError):
        pass
    manifest_path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log(f"building {path} (not measured; cached for later runs)")
    build(path)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"built {path} in {time.perf_counter() - started:.1f} s")
    return False


def read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header (without __metadata__) and the offset where its data starts."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


def tensor_digest(path: Path, name: str) -> dict:
    """dtype, shape and sha256 of tensor `name`'s bytes in a safetensors file, read in chunks."""
    header, data = read_header(path)
    entry = header[name]
    begin, end = entry["data_offsets"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(data + begin)
        left = end - begin
        while left:
            chunk = f.read(min(READ_CHUNK, left))
            if not chunk:
                raise ValueError(f"{path}: truncated inside {name}")
            digest.update(chunk)
            left -= len(chunk)
    return {"dtype": entry["dtype"], "shape": entry["shape"], "bytes": end - begin, "sha256": digest.hexdigest()}


def file_sha256(path: Path) -> str:
    """sha256 of a file, read 64 MB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(64 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _tensor_files(directory: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file of `directory` that holds it."""
    found = {}
    for path in sorted(directory.glob("*.safetensors")):
        for name in read_header(path)[0]:
            if name in found:
                raise ValueError(f"{name} is in both {found[name].name} and {path.name}")
            found[name] = path
    return found


def verify(original: Path, decoded: Path, bits: int, sample_rows: int = 64) -> dict:
    """Check `decoded` against `original` (see the module docstring); raise ValueError if not."""
    import torch
    from safetensors import safe_open

    want, got = _tensor_files(original), _tensor_files(decoded)
    if set(want) != set(got):
        raise ValueError(f"tensor names differ: missing {sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}")
    worst_distinct, worst_error, checked = 0, 0.0, 0
    for name in want:
        with safe_open(want[name], "pt") as a, safe_open(got[name], "pt") as b:
            sa, sb = a.get_slice(name), b.get_slice(name)
            shape = sa.get_shape()
            if shape != sb.get_shape() or sa.get_dtype() != sb.get_dtype():
                raise ValueError(f"{name}: {sb.get_dtype()} {sb.get_shape()} decoded, {sa.get_dtype()} {shape} stored")
            if len(shape) == 1:  # norms: stored raw, so equal
                if not torch.equal(sa[:], sb[:]):
                    raise ValueError(f"{name}: a 1-D tensor (stored raw) changed")
                continue
            picks = sorted({k * shape[0] // sample_rows for k in range(sample_rows)} | {shape[0] - 1})
            x = torch.cat([sa[r : r + 1] for r in picks]).float()
            y = torch.cat([sb[r : r + 1] for r in picks]).float()
        distinct = torch.unique(y).numel()
        error = ((y - x).pow(2).mean() / x.pow(2).mean().clamp_min(1e-30)).sqrt().item()
        worst_distinct, worst_error, checked = max(worst_distinct, distinct), max(worst_error, error), checked + 1
        if distinct > 2**bits or error > 0.5:
            raise ValueError(f"{name}: {distinct} distinct values (at most {2**bits}), relative RMS error {error:.3f} on {len(picks)} rows")
    return {"tensors": len(want), "sampled_2d": checked, "max_distinct": worst_distinct, "max_relative_rms_error": worst_error}


def load_with_transformers(directory: Path) -> dict:
    """AutoModelForCausalLM.from_pretrained(directory) in fp16, with no missing or unexpected keys."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    # transformers 5 renamed torch_dtype= to dtype=.
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True, **{key: torch.float16})
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
    if problems:
        raise ValueError(f"from_pretrained: {problems}")
    dtypes = {str(p.dtype) for p in model.parameters()}
    return {
        "transformers_load_s": time.perf_counter() - started,
        "model_class": type(model).__name__,
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "model_dtypes": sorted(dtypes),
    }


def main(argv: list[str]) -> int:
    """`verify ORIGINAL DECODED --bits N`: both checks; one JSON line, or one error line."""
    if len(argv) != 5 or argv[0] != "verify" or argv[3] != "--bits":
        print("usage: scale_checkpoint.py verify ORIGINAL DECODED --bits N", file=sys.stderr)
        return 2
    try:
        result = verify(Path(argv[1]), Path(argv[2]), int(argv[4]))
        result.update(load_with_transformers(Path(argv[2])))
    except Exception as error:  # noqa: BLE001 - one line for scale.py to show, not a traceback
        print(f"verify: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
