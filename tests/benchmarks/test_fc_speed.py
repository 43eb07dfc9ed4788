"""benchmarks/fc_speed.py's interleaved timing rounds: who runs when, on which copy."""

from __future__ import annotations

import fc_speed


def recorder(log: list, name: str):
    def call(copy):
        log.append((name, copy))

    return call


def test_rounds_interleave_competitors_and_rotate_their_order():
    log: list = []
    calls = {name: (recorder(log, name), [(f"{name}{i}",) for i in range(7)]) for name in "abc"}
    fc_speed.time_rounds(calls, warmup=1, repeats=3)
    per_call = 1 + fc_speed.BURST + 1  # untimed, cold burst, hot
    assert len(log) == 4 * 3 * per_call
    firsts = [log[i][0] for i in range(0, len(log), 3 * per_call)]
    assert firsts == ["a", "b", "c", "a"]
    for start in range(0, len(log), per_call):
        visit = log[start : start + per_call]
        assert len({name for name, _ in visit}) == 1  # one competitor's calls stay together
        copies = [copy for _, copy in visit]
        assert len(set(copies[:-1])) == len(copies) - 1  # untimed and cold calls: each on a new copy
        assert copies[-1] == copies[-2]  # hot: again on the copy just read


def test_times_are_medians_of_the_timed_calls_only(monkeypatch):
    # Within a visit: the untimed call takes 1000, the cold burst 1, 2, 3 (times the
    # competitor's factor), the hot call 0.5; warmup rounds take 10^6 a call.
    state = {"now": 0.0}
    per_visit = [1000.0, 1.0, 2.0, 3.0, 0.5]
    assert fc_speed.BURST == 3

    def make(factor):
        calls_made = {"n": 0}

        def call(_copy):
            index = calls_made["n"] % len(per_visit)
            round_ = calls_made["n"] // len(per_visit)
            calls_made["n"] += 1
            state["now"] += 1e6 if round_ < 2 else factor * per_visit[index]

        return call

    monkeypatch.setattr(fc_speed.time, "perf_counter", lambda: state["now"])
    calls = {"x": (make(1.0), [(0,), (1,)]), "y": (make(10.0), [(0,), (1,)])}
    timed = fc_speed.time_rounds(calls, warmup=2, repeats=5)
    assert timed["x"] == {"cold": 2.0, "cold_min": 1.0, "hot": 0.5}
    assert timed["y"] == {"cold": 20.0, "cold_min": 10.0, "hot": 5.0}


def test_the_batch_one_layout_is_named(monkeypatch):
    import numpy as np

    from deepzip.runtime import kernels, permute

    rng = np.random.default_rng(0)

    def packed(shape, density):
        positions = np.flatnonzero(rng.random(shape[0] * shape[1]) < density)
        return kernels.pack_linear(shape, rng.standard_normal(32).astype(np.float32), positions, rng.integers(0, 32, positions.size))

    monkeypatch.setattr(permute, "_HOST", True)  # the choice only; nothing here runs the kernel
    assert fc_speed.batch_one_layout_name(packed((64, 300), 0.5)).startswith("register-permute (padding ")
    monkeypatch.setattr(permute, "_HOST", False)
    assert fc_speed.batch_one_layout_name(packed((64, 300), 0.8)) == "code-split"  # >= 5 weights a (row, code)
    assert fc_speed.batch_one_layout_name(packed((64, 300), 0.01)) == "sliced"
