"""Recipes: shipped files load, and every malformed recipe is one clear ConfigError."""

import pytest

from deepzip.errors import ConfigError
from deepzip.train.recipe import SHIPPED, LayerRule, load_recipe, parse_recipe


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_load(name):
    recipe = load_recipe(name)
    assert recipe.rules
    assert all(isinstance(rule, LayerRule) for rule in recipe.rules.values())


def test_vgg16_recipe_is_the_papers_table_4():
    kept = {p: round(1 - s, 2) for p, s in load_recipe("vgg16").setting("sparsity").items()}
    assert list(kept.values()) == [0.58, 0.22, 0.34, 0.36, 0.53, 0.24, 0.42, 0.32, 0.27, 0.34, 0.35, 0.29, 0.36, 0.04, 0.04, 0.23]
    bits = load_recipe("vgg16").setting("bits")
    assert {bits[p] for p in bits if p.startswith("features")} == {8}
    assert {bits[p] for p in bits if p.startswith("classifier")} == {5}


def test_alexnet_recipe_is_the_papers_table_3():
    kept = [round(1 - s, 2) for s in load_recipe("alexnet").setting("sparsity").values()]
    assert kept == [0.84, 0.38, 0.35, 0.37, 0.37, 0.09, 0.09, 0.25]


def test_settings_keep_pattern_order():
    recipe = parse_recipe("layers:\n  fc1: {sparsity: 0.9}\n  'fc*': {bits: 4, index_bits: 5}\n")
    assert recipe.setting("sparsity") == {"fc1": 0.9}
    assert recipe.setting("bits") == {"fc*": 4}
    assert recipe.setting("index_bits") == {"fc*": 5}


@pytest.mark.parametrize(
    "text, words",
    [
        ("layers: [", "not valid YAML"),
        ("- 1\n- 2\n", "'layers' key"),
        ("layerz: {fc1: {bits: 4}}\n", "'layers' key"),
        ("layers: {}\n", "'layers' must map"),
        ("layers: {fc1: 5}\n", "layers.fc1"),
        ("layers: {fc1: {bitz: 5}}\n", "unknown setting 'bitz'"),
        ("layers: {fc1: {sparsity: 1.5}}\n", "layers.fc1.sparsity"),
        ("layers: {fc1: {sparsity: yes}}\n", "layers.fc1.sparsity"),
        ("layers: {fc1: {quality: -1}}\n", "layers.fc1.quality"),
        ("layers: {fc1: {quality: 1, sparsity: 0.5}}\n", "not both"),
        ("layers: {fc1: {bits: 0}}\n", "layers.fc1.bits"),
        ("layers: {fc1: {bits: 4.5}}\n", "layers.fc1.bits"),
        ("layers: {fc1: {index_bits: 13}}\n", "layers.fc1.index_bits"),
        ("layers: {fc1: !!python/object/apply:os.system [echo hi]}\n", "not valid YAML"),
    ],
)
def test_bad_recipes_are_one_clear_error(text, words):
    with pytest.raises(ConfigError) as error:
        parse_recipe(text, "my.yaml")
    message = str(error.value)
    assert message.startswith("my.yaml") and words in message and "\n" not in message


def test_missing_recipe_file_names_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match="vgg16"):
        load_recipe(tmp_path / "nope.yaml")


def test_recipe_from_a_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("layers:\n  conv*: {quality: 0.7, bits: 6}\n")
    assert load_recipe(path).rules == {"conv*": LayerRule(quality=0.7, bits=6)}
