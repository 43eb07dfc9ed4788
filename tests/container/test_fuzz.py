"""Quick fuzzing of the .dzip reader, in process (the long run: benchmarks/fuzz_reader.py).

The contract: for any bytes, `container.from_bytes(data).state_dict()` succeeds or raises
FormatError. The mutators live in `fuzzing`; these tests also check that they do
fuzz something (they change the bytes) and that the checksum-fixing ones get past the
crc32 checks to the semantic checks behind them.
"""

from collections import Counter

import fuzzing as fuzz
import numpy as np
import pytest
import torch

from deepzip import container
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.container import header
from deepzip.container.spec import ENCODING_ALIAS, ENCODING_CODEBOOK, ENCODING_FILE, ENCODING_FILE_XZ
from deepzip.errors import ChecksumError, FormatError

SEED = 1
INPUTS = 2500


@pytest.fixture(scope="module")
def seeds():
    return fuzz.seed_files()


def test_seed_files_decode_and_parse(seeds):
    assert len(seeds) >= 8
    versions = Counter()
    for name, data in seeds.items():
        assert fuzz.check_one(data) == "ok", name
        layout = fuzz.parse_layout(data)
        assert layout.complete, name
        versions[layout.version] += 1
        parsed = container.from_bytes(data)
        assert len(layout.sections()) == len(layout.records) == len(parsed.tensors) + len(parsed.files)
        # The layout agrees with the reader's header, field for field.
        for record, checked in zip(layout.records, header.parse(data).records, strict=True):
            assert (record.section_offset, record.section_size) == (checked.offset, checked.size), name
            if checked.encoding == ENCODING_CODEBOOK:
                params = [record.value(n) for n in ("k", "b", "E", "K", "C", "G")]
                assert params == [checked.k, checked.index_bits, checked.entries, checked.kept, checked.code_bytes, checked.gap_bytes]
                assert [name for name, _ in record.part_sizes()] == list(fuzz.PARTS)
                sizes = dict(record.part_sizes())
                assert (sizes["code_table"], sizes["gap_table"]) == (checked.code_table_bytes, checked.gap_table_bytes), name
                assert (sizes["codebook"], sizes["scales"]) == (checked.codebook_bytes, checked.scale_bytes), name
                if layout.version >= 3:
                    axis = None if not record.value("scale_axis") else record.value("scale_axis") - 1
                    assert (record.coding_flags, axis) == (checked.flags, checked.scale_axis), name
        sections = sum(size for _, _, size in layout.sections())
        start, end = layout.body
        if layout.version == 1:  # preamble, header, crc32, sections
            assert (start, end + 4 + sections) == (16, len(data)), name
        else:  # preamble, sections, header body, trailer
            assert (16 + sections, end + 8) == (start, len(data)), name
        assert fuzz.recompute_crcs(data) == data, name
    assert versions[1] >= 1 and versions[2] >= 3 and versions[3] >= 1 and versions[4] >= 1 and versions[5] >= 1 and versions[6] >= 4, versions


def test_seed_files_hold_dense_records_and_aliases(seeds):
    kinds = Counter()
    for data in seeds.values():
        for record in header.parse(data).records:
            kinds["dense" if record.encoding == ENCODING_CODEBOOK and record.index_bits == 0 else record.encoding] += 1
            kinds[f"v{data[8]} alias"] += record.encoding == ENCODING_ALIAS
            kinds[f"v{data[8]} file"] += record.encoding == ENCODING_FILE
    assert kinds["dense"] >= 3 and kinds["v2 alias"] >= 2 and kinds["v1 alias"] >= 1 and kinds["v6 alias"] >= 3, kinds
    assert kinds["v2 file"] >= 2 and kinds["v3 file"] >= 2 and kinds["v6 file"] >= 2, kinds


def test_seed_files_hold_what_version_3_adds(seeds):
    # Each coding flag, scales along the first and a later dim, xz files: for the
    # v3-aware mutators to work on.
    kinds = Counter()
    for data in seeds.values():
        for record in header.parse(data).records:
            if record.encoding == ENCODING_CODEBOOK:
                for bit, kind in ((1, "rans codes"), (2, "rans gaps"), (4, "f16 codebook"), (8, "f16 scales")):
                    kinds[kind] += bool(record.flags & bit)
                kinds["huffman codes, rans gaps"] += record.flags & 3 == 2
                kinds["certain symbol"] += record.flags & 1 and record.code_bytes == 0 and record.entries > 0
                kinds[f"scale axis {'first' if record.scale_axis == 0 else 'later'}"] += record.scale_axis is not None
            kinds["xz file"] += record.encoding == ENCODING_FILE_XZ
    needed = ["rans codes", "rans gaps", "f16 codebook", "f16 scales", "huffman codes, rans gaps", "certain symbol"]
    needed += ["scale axis first", "scale axis later", "xz file"]
    assert all(kinds[kind] >= 2 for kind in needed), kinds


def test_relayout_keeps_every_record_and_section(seeds):
    for name in ("mlp_small_v2", "lenet_conv_v2"):  # version 2, no dense record
        data = seeds[name]
        expected = container.from_bytes(data).state_dict()
        for version in (1, 3):
            other = fuzz.relayout(data, version)
            assert other[8] == version and fuzz.parse_layout(other).complete
            got = container.from_bytes(other).state_dict()
            assert sorted(got) == sorted(expected) and all(torch.equal(got[k], expected[k]) for k in expected), name
            if version == 3:  # Huffman records of float32 entries without scales: back unchanged
                assert fuzz.relayout(other, 2) == data, name
    # Version 1 -> 2 -> 1 is the identity (K = E is dropped again); K = E is wrong where fillers are.
    as_v2 = fuzz.relayout(seeds["golden_v1"], 2)
    assert as_v2[8] == 2 and fuzz.relayout(as_v2, 1) == seeds["golden_v1"]
    assert fuzz.check_one(as_v2) == "format_error"
    # A dense record has no version-1 form: the version-1 reader refuses b = 0.
    assert fuzz.check_one(fuzz.relayout(seeds["dtypes_v2"], 1)) == "format_error"
    assert fuzz.relayout(seeds["dtypes"][:-1], 1) is None
    # rANS streams, float16 entries, scales and xz files have no version-2 form.
    assert fuzz.check_one(fuzz.relayout(seeds["v3_features"], 2)) == "format_error"


def test_version_2_seeds_are_the_version_3_seeds_huffman_coded(seeds):
    for name in ("mlp_small", "lenet_conv", "dtypes"):
        v3, v2 = container.from_bytes(seeds[name]), container.from_bytes(seeds[f"{name}_v2"])
        assert seeds[f"{name}_v2"][8] == 2 and v2.files == v3.files
        expected, got = v3.state_dict(), v2.state_dict()
        assert sorted(got) == sorted(expected) and all(torch.equal(got[k], expected[k]) for k in expected), name


def test_stream_recode_without_a_change_is_a_valid_file(seeds):
    # Re-coding the symbols it decoded, with either coder, must give a file that decodes
    # to the same tensors: the mutator's valid outputs are valid files.
    same = 0
    for index in range(60):
        rng = np.random.default_rng([SEED, index])
        name = ("v3_features", "dtypes", "golden_v3", "mlp_small_v2")[index % 4]
        data = fuzz.MUTATORS["stream_recode"](seeds[name], rng)
        try:
            got = container.from_bytes(data).state_dict()
        except FormatError:
            continue
        expected = container.from_bytes(seeds[name]).state_dict()
        same += all(torch.equal(got[k], expected[k]) or torch.isnan(got[k]).any() for k in expected)
    assert same >= 5


def test_recompute_crcs_gets_past_the_checksums(seeds):
    for data in seeds.values():
        for _, offset, size in fuzz.parse_layout(data).sections():
            if size == 0:
                continue
            damaged = bytearray(data)
            damaged[offset + size - 1] ^= 0x01
            with pytest.raises(ChecksumError):
                container.from_bytes(bytes(damaged))
            try:
                fuzz.check_one(fuzz.recompute_crcs(bytes(damaged)))
            except ChecksumError:  # pragma: no cover - the assertion's message says it
                pytest.fail("recompute_crcs left a checksum mismatch")


def test_random_inputs_decode_or_raise_format_error(seeds):
    outcomes, failures = Counter(), []
    for index in range(INPUTS):
        data, chain, seed_name = fuzz.generate(seeds, SEED, index)
        try:
            outcomes[fuzz.check_one(data)] += 1
        except Exception as error:  # noqa: BLE001 - anything but FormatError is a reader bug
            failures.append(f"input {index} ({seed_name}, {chain}): {type(error).__name__}: {error}")
    assert not failures, (
        f"{len(failures)} of {INPUTS} inputs raised something other than FormatError "
        f"(rerun one with: python benchmarks/fuzz_reader.py --seed {SEED} --reproduce INDEX):\n"
        + "\n".join(failures[:20])
    )
    assert outcomes["ok"] > 0 and outcomes["format_error"] > 0


@pytest.mark.parametrize("name", sorted(fuzz.MUTATORS))
def test_mutator_changes_the_bytes(seeds, name):
    changed = total = 0
    for index in range(25):
        for seed_name in sorted(seeds):
            data = seeds[seed_name]
            mutated = fuzz.MUTATORS[name](data, np.random.default_rng([SEED, index]))
            assert isinstance(mutated, bytes)
            changed += mutated != data
            total += 1
    assert changed >= 0.85 * total, f"{name} left {total - changed} of {total} inputs unchanged"


def test_mutators_accept_any_bytes(seeds):
    """Mutators run on damaged files too (chains), so none may raise on odd input."""
    odd = [b"", b"\x89", fuzz.MAGIC, fuzz.MAGIC + b"\x01\x00\x00\x00\xff\xff\xff\xff", bytes(64), bytes(range(256))]
    rng = np.random.default_rng(SEED)
    for data in seeds.values():
        cuts = fuzz.parse_layout(data).boundaries()
        odd += [data[: cuts[i] + int(rng.integers(2))] for i in rng.choice(len(cuts), 12, replace=False)]
    for name, mutator in sorted(fuzz.MUTATORS.items()):
        for index, data in enumerate(odd):
            assert isinstance(mutator(data, np.random.default_rng([SEED, index])), bytes), name
    names = sorted(fuzz.MUTATORS)
    for index in range(150):
        data = seeds[sorted(seeds)[index % len(seeds)]]
        for _ in range(6):
            data = fuzz.MUTATORS[names[rng.integers(len(names))]](data, rng)


@pytest.mark.parametrize("name", sorted(fuzz.CRC_FIXING))
def test_checksum_fixing_mutators_reach_the_semantic_checks(seeds, name):
    outcomes = Counter()
    for index in range(40):
        for seed_name in sorted(seeds):
            data = fuzz.MUTATORS[name](seeds[seed_name], np.random.default_rng([SEED, index]))
            try:
                # The harness's decoded-size cap: a flipped dim of a significance record can
                # otherwise ask for billions of flags (bounded by the 64 GiB default, in time).
                container.from_bytes(data, max_decoded_size=fuzz.FUZZ_MAX_DECODED_SIZE).state_dict()
                outcomes["ok"] += 1
            except ChecksumError:
                outcomes["checksum"] += 1
            except FormatError:
                outcomes["semantic"] += 1
            except Exception:  # noqa: BLE001 - reported by the random-input test
                outcomes["other"] += 1
    # The layout parser follows the spec, so its checksums are the ones the reader checks.
    assert outcomes["checksum"] == 0, outcomes
    assert outcomes["semantic"] >= 0.25 * sum(outcomes.values()), outcomes


# Reproducers of a reader bug found by the fuzzer: a zero-size shape has element count 0,
# within the format's 2**40 limit, however large its other dims; but torch computes
# contiguous strides as products of max(dim, 1), which overflow int64 here, and raises
# RuntimeError ("Stride calculation overflowed") instead of FormatError.


def _with_dims(model: CompressedModel, dims: list[int]) -> bytes:
    """`model` (one 4-d tensor) with its dims replaced in the header, checksums fixed."""
    data = container.to_bytes(model)
    assert len(dims) == len(fuzz.parse_layout(data).records[0].dims)
    for field, value in zip(fuzz.parse_layout(data).records[0].dims, dims):
        data = fuzz._put(data, field, value)
    return fuzz.recompute_crcs(data)


@pytest.mark.parametrize(
    "model",
    [
        CompressedModel({"empty": RawTensor(torch.zeros(0, 3, 2, 1))}),
        CompressedModel(
            {
                "empty.weight": CodebookTensor(
                    (0, 3, 2, 1), torch.float32, np.zeros(1, np.float32), np.zeros(0, np.int64), np.zeros(0, np.uint16)
                )
            }
        ),
    ],
    ids=["raw", "codebook"],
)
@pytest.mark.parametrize("dims", [[0, 2**32 - 1, 2**32 - 1, 1], [2**32 - 1, 2**32 - 1, 2**32 - 1, 0]])
def test_zero_size_shape_with_huge_dims(model, dims):
    data = _with_dims(model, dims)
    try:
        fuzz.check_one(data)
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"shape {dims}: {type(error).__name__}: {error}")


def test_varint_field_edits_shift_the_header(seeds):
    # Version 2's to 4's counts and sizes are varints: an edit that changes a varint's
    # length shifts what follows and the trailer's H, so the layout still parses whole.
    data = seeds["mlp_small"]
    layout = fuzz.parse_layout(data)
    assert layout.version == 6 and all(f.varint for f in layout.fields if f.name in ("count", "size", "E", "K", "C", "G", "TC", "TG"))
    size = layout.records[0].fields["size"]
    for value in (0, 127, 129, 1 << 32, (1 << 64) - 1):  # the section is 128 bytes
        edited = fuzz.recompute_crcs(fuzz._put(data, size, value))
        assert len(edited) == len(data) + len(fuzz.pack_varint(value)) - size.width
        again = fuzz.parse_layout(edited)
        assert again.complete and again.records[0].section_size == value
        assert again.body[0] == layout.body[0]
        with pytest.raises(FormatError) as err:
            container.from_bytes(edited)
        assert not isinstance(err.value, ChecksumError)
    rng = np.random.default_rng(SEED)
    for _ in range(30):  # malformed varints behind valid crcs: refused as such
        edited = fuzz.recompute_crcs(fuzz._put(data, size, 0, fuzz._malformed_varint(size.value, rng)))
        with pytest.raises(FormatError, match="varint|exceeds 64 bits") as err:
            container.from_bytes(edited)
        assert not isinstance(err.value, ChecksumError)
