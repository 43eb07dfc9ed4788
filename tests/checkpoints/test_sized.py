"""compress --size: the file on disk fits its budget, data-free and calibrated, and decodes."""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers imports huggingface_hub: never download
transformers = pytest.importorskip("transformers")

import torch
from click.testing import CliRunner

import deepzip
from deepzip import container
from deepzip.checkpoints.calibration import transformers_probe
from deepzip.checkpoints.sized import compress_to_size
from deepzip.cli import main
from deepzip.errors import ConfigError

torch.set_num_threads(1)
def fp32_bytes(directory):
    return sum(4 * t.numel() for t in deepzip.checkpoints.read_checkpoint(directory).state_dict.values())


@pytest.mark.parametrize("size", ["3x", "5x", "8x"])
@pytest.mark.parametrize("calibrated", [False, True])
def test_the_file_on_disk_fits_the_budget(bert, tmp_path, size, calibrated):
    directory, text = bert
    probe = transformers_probe(directory, text) if calibrated else None
    out = tmp_path / "m.dzip"
    written, _, allocation = compress_to_size(directory, out, size, probe=probe)
    assert written == out.stat().st_size <= allocation.budget == fp32_bytes(directory) // int(size[0])
    assert set(deepzip.load(out)) >= {"embeddings.word_embeddings.weight"}
    assert container.open_file(out).header.version == container.VERSION


def test_a_file_well_under_its_budget_is_written_again_with_the_spare_bytes(bert, tmp_path):
    from deepzip.checkpoints.sized import MAX_TRIES, SLACK

    directory, _ = bert
    logged = []
    out = tmp_path / "m.dzip"
    written, _, allocation = compress_to_size(directory, out, "5x", log=logged.append)
    spent = allocation.budget - written <= SLACK * allocation.budget
    assert spent or allocation.tries == MAX_TRIES or any("under the budget" in line for line in logged)
    assert written == out.stat().st_size <= allocation.budget
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dzip"]  # no spare file left


def test_more_bytes_give_less_distortion_on_the_calibration_text(bert, tmp_path):
    directory, text = bert
    probe = transformers_probe(directory, text)
    errors = []
    for size in ("8x", "4x"):
        out = tmp_path / f"{size}.dzip"
        compress_to_size(directory, out, size, probe=probe)
        state = deepzip.load(out)
        model = transformers.AutoModel.from_pretrained(directory).eval()
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        errors.append(OutputError.of(probe, model))
    assert errors[1] < errors[0]


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(48, 96)
        self.second = torch.nn.Linear(96, 24)

    def forward(self, x):
        return self.second(torch.nn.functional.gelu(self.first(x)))


def test_error_compensation_lowers_the_calibration_distortion_at_the_same_budget(tmp_path, monkeypatch):
    """On correlated inputs (as real activations are), compensated rounding beats plain rounding at one size."""
    from safetensors.torch import save_file

    from deepzip.budget.sensitivity import OutputDistortion
    from deepzip.checkpoints import sized

    torch.manual_seed(0)
    model = Mlp().eval()
    save_file(model.state_dict(), tmp_path / "mlp.safetensors")
    mixing = torch.randn(48, 48) * torch.logspace(0, -2, 48)
    batches = [torch.randn(64, 48) @ mixing for _ in range(4)]
    probe = OutputDistortion(model, batches)
    errors = {}
    for compensated in (True, False):
        if not compensated:
            monkeypatch.setattr(sized, "input_moments", lambda *args: {})
        out = tmp_path / f"{compensated}.dzip"
        _, _, allocation = compress_to_size(tmp_path / "mlp.safetensors", out, "6x", probe=probe)
        assert allocation.compensated == ({"first.weight", "second.weight"} if compensated else set())
        copy = Mlp().eval()
        copy.load_state_dict(deepzip.load(out))
        errors[compensated] = _distortion(probe, copy)
    assert errors[True] < 0.8 * errors[False]


def _distortion(probe, model):
    from deepzip.budget.sensitivity import relative_error

    with torch.no_grad():
        return sum(relative_error(r, model(b)) for b, r in zip(probe.batches, probe.reference))


class OutputError:
    @staticmethod
    def of(probe, model):
        from deepzip.budget.sensitivity import relative_error

        with torch.no_grad():
            return sum(relative_error(r, model(**b), b["attention_mask"]) for b, r in zip(probe.batches, probe.reference))


def test_an_impossible_budget_is_one_clear_error(bert, tmp_path):
    directory, _ = bert
    with pytest.raises(ConfigError, match="budget"):
        compress_to_size(directory, tmp_path / "m.dzip", "1000x")
    assert not (tmp_path / "m.dzip").exists()


def test_cli_size_and_its_errors(bert, tmp_path):
    directory, text = bert
    runner = CliRunner()
    out = tmp_path / "cli.dzip"
    result = runner.invoke(main, ["compress", str(directory), "-o", str(out), "--size", "6x", "--calibration-text", str(text)])
    assert result.exit_code == 0, result.output
    assert "budget" in result.output and out.stat().st_size <= fp32_bytes(directory) // 6
    assert "error-compensated" in result.output
    for args, message in [
        (["--size", "banana"], "size"),
        (["--size", "6x", "--bits", "4"], "--size"),
        (["--calibration-text", str(text)], "--size"),
        (["--size", "6x", "--bits-per-weight", "3"], "one of"),
    ]:
        result = runner.invoke(main, ["compress", str(directory), "-o", str(tmp_path / "bad.dzip"), *args])
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output
        assert not (tmp_path / "bad.dzip").exists()
