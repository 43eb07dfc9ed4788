"""The command line: one clear line and a non-zero exit for every bad input, no traceback."""

import pytest
from click.testing import CliRunner

import deepzip
from deepzip.cli import main
from deepzip.paper.schedules import RECIPES, PruneStep, Recipe
from deepzip.paper.training import TrainConfig
from deepzip.train.recipe import load_recipe


def run(*args):
    # catch_exceptions=False: an exception that escapes the CLI fails the test outright.
    return CliRunner().invoke(main, list(args), catch_exceptions=False, prog_name="deepzip")


def one_error_line(result):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["reproduce", "resnet-50"], "resnet-50"),
        (["reproduce"], "Missing argument"),
        (["reproduce", "lenet-5", "--seed", "x"], "--seed"),
        (["info"], "Missing argument"),
        (["info", "a.dzip", "--nope"], "--nope"),
        (["bogus"], "bogus"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, words):
    result = run(*args)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert line.startswith("deepzip: usage error:") and words in line


def test_help_and_version_exit_0():
    assert run("--help").exit_code == 0
    assert run("reproduce", "--help").exit_code == 0
    assert run("--version").exit_code == 0


def test_missing_data_directory_says_where_to_put_files(tmp_path):
    result = run("reproduce", "lenet-300-100", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert one_error_line(result).startswith("deepzip: error:")


def test_data_directory_without_mnist_files_names_them(tmp_path):
    result = run("reproduce", "lenet-5", "--data", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "train-images-idx3-ubyte" in one_error_line(result)


def test_info_on_a_file_that_is_not_dzip(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04 not a dzip")
    result = run("info", str(path))
    assert result.exit_code == 1
    assert "not a .dzip file" in one_error_line(result)


def test_info_on_a_missing_file(tmp_path):
    result = run("info", str(tmp_path / "missing.dzip"))
    assert result.exit_code == 1
    assert "no such file" in one_error_line(result)


def test_info_on_a_truncated_file(tmp_path):
    model = _small_compressed(tmp_path)
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    result = run("info", str(model))
    assert result.exit_code == 1
    one_error_line(result)


def test_info_prints_the_table_from_the_file_alone(tmp_path):
    path = _small_compressed(tmp_path)
    result = run("info", str(path))
    assert result.exit_code == 0
    rows = {line.split()[0] for line in result.output.splitlines() if line.strip()}
    assert {"0.weight", "0.bias", "2.weight", "2.bias", "total"} <= rows


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "bad.dzip"
    path.write_bytes(b"nope")
    with pytest.raises(deepzip.FormatError):
        run("--debug", "info", str(path))


def test_reproduce_runs_on_user_data(tiny_mnist, tmp_path, monkeypatch):
    quick = TrainConfig(epochs=1, lr=0.05)
    recipe = Recipe("lenet-300-100", quick, (PruneStep({"*": 0.8}, quick),), {"*": 4}, quick)
    monkeypatch.setitem(RECIPES, "lenet-300-100", recipe)
    result = run("reproduce", "lenet-300-100", "--data", str(tiny_mnist), "--out", str(tmp_path), "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "ratio:" in result.output
    assert (tmp_path / "model.dzip").is_file() and (tmp_path / "results.json").is_file()


def _small_compressed(tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 4))
    deepzip.prune_(model, 0.6, min_size=0)
    deepzip.quantize_(model, 3, min_size=0)
    path = tmp_path / "small.dzip"
    deepzip.save(model, path)
    return path


def test_report_writes_markdown_and_figures(tmp_path):
    path = _small_compressed(tmp_path)
    result = run("report", str(path), "-o", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "report.md").is_file()
    assert any(p.suffix == ".png" for p in (tmp_path / "report").iterdir())


def test_report_on_a_missing_file(tmp_path):
    result = run("report", str(tmp_path / "missing.dzip"), "-o", str(tmp_path / "r"))
    assert result.exit_code == 1
    assert "no such file" in one_error_line(result)


def test_sensitivity_writes_a_recipe_that_reproduce_runs(tiny_mnist, tmp_path, monkeypatch):
    quick = TrainConfig(epochs=1, lr=0.05)
    shipped = Recipe("lenet-300-100", quick, (PruneStep({"*": 0.5}, quick), PruneStep({"*": 0.8}, quick)), {"*": 4}, quick)
    monkeypatch.setitem(RECIPES, "lenet-300-100", shipped)
    result = run("sensitivity", "lenet-300-100", "--data", str(tiny_mnist), "--out", str(tmp_path), "--tolerance", "0.05")
    assert result.exit_code == 0, result.output
    recipe = tmp_path / "sensitivity" / "recipe.yaml"
    for name in ("sparsity.png", "bits.png", "sparsity.json", "bits.md"):
        assert (tmp_path / "sensitivity" / name).is_file()
    rules = load_recipe(recipe)
    result = run("reproduce", "lenet-300-100", "--data", str(tiny_mnist), "--out", str(tmp_path), "--recipe", str(recipe))
    assert result.exit_code == 0, result.output
    decoded = deepzip.load(tmp_path / "model.dzip")
    for layer, sparsity in rules.setting("sparsity").items():
        zeros = float((decoded[f"{layer}.weight"] == 0).float().mean())
        assert zeros >= sparsity - 1e-3


def test_recipe_schedule_reaches_the_final_sparsity_geometrically():
    from deepzip.paper.schedules import PAPER_RECIPES as SHIPPED
    from deepzip.paper.schedules import recipe_schedule
    from deepzip.train.recipe import parse_recipe

    schedule = recipe_schedule("lenet-300-100", parse_recipe("layers:\n  fc1: {sparsity: 0.91, bits: 4}\n"))
    steps = len(SHIPPED["lenet-300-100"].prune_steps)
    kept = [1 - step.sparsity["fc1"] for step in schedule.prune_steps]
    assert len(kept) == steps
    assert kept[-1] == pytest.approx(0.09)
    assert kept == pytest.approx([0.09 ** (i / steps) for i in range(1, steps + 1)])
    assert list(schedule.bits.items())[0] == ("fc1", 4)


def test_reproduce_with_a_missing_recipe_file(tmp_path):
    result = run("reproduce", "lenet-5", "--recipe", str(tmp_path / "nope.yaml"), "--out", str(tmp_path))
    assert result.exit_code == 1
    assert "nope.yaml" in one_error_line(result)


def test_reproduce_nproc_relaunches_itself_under_torchrun(monkeypatch, tmp_path):
    import subprocess

    calls = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(subprocess, "call", lambda command: calls.append(command) or 0)
    result = run("reproduce", "lenet-5", "--nproc", "2", "--out", str(tmp_path), "--seed", "4")
    assert result.exit_code == 0, result.output
    (command,) = calls
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert command[5:] == ["-m", "deepzip.cli", "reproduce", "lenet-5", "--seed", "4", "--checkpoint-every", "2000", "--out", str(tmp_path)]
