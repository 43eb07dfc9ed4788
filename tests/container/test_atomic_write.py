"""A writer killed mid-write (SIGKILL) leaves the old file intact and nothing partial in its place."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import deepzip
from deepzip.compressed import CompressedModel, RawTensor

CHILD = textwrap.dedent(
    """
    import os, sys, time, torch
    from deepzip import container
    from deepzip.compressed import CompressedModel, RawTensor

    stage = sys.argv[2]
    real_fsync = os.fsync

    def stall(fd):
        # Reached with the new bytes written to the temporary file but not yet renamed.
        if stage == "fsync":
            print("stalled", flush=True)
            time.sleep(60)
        real_fsync(fd)

    os.fsync = stall
    # Bytes, so that the 16 MB section is written raw (version 5 would entropy code the
    # byte planes of compressible floats).
    model = CompressedModel({"w": RawTensor(torch.arange(16_000_000, dtype=torch.int64).remainder(251).to(torch.uint8))})
    if stage == "write":
        # Stall inside the byte copy itself: the writer opens the temporary file that
        # atomic.replace_file created and writes the sections into it; the 16 MB tensor
        # section is written half, then the writer stalls. The preamble before it is whole.
        from deepzip.container import writer
        real_open = open

        class HalfThenStall:
            def __init__(self, f):
                self.f = f
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                return self.f.__exit__(*exc)
            def write(self, data):
                if memoryview(data).nbytes < 1 << 20:
                    return self.f.write(data)
                self.f.write(memoryview(data).cast("B")[: memoryview(data).nbytes // 2])
                self.f.flush()
                print("stalled", flush=True)
                time.sleep(60)
            def __getattr__(self, name):
                return getattr(self.f, name)

        # A module global shadows the builtin for the writer's module alone.
        writer.open = lambda path, mode: HalfThenStall(real_open(path, mode))
    container.write(model, sys.argv[1], overwrite=True)
    """
)


@pytest.mark.parametrize("stage", ["write", "fsync"])
def test_sigkill_mid_write_keeps_the_old_file(tmp_path, stage):
    path = tmp_path / "model.dzip"
    old = CompressedModel({"w": RawTensor(torch.ones(3))})
    deepzip.save(old, path)
    before = path.read_bytes()

    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), stage], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "stalled"
        temporaries = [p for p in tmp_path.iterdir() if p.name != "model.dzip"]
        assert temporaries, "the writer should be writing a temporary file beside the target"
        if stage == "write":  # the preamble and half of the 16 MB section, no header yet
            assert temporaries[0].stat().st_size == 16 + 8_000_000
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()

    assert path.read_bytes() == before
    assert deepzip.load(path)["w"].tolist() == [1.0, 1.0, 1.0]
    # The only other file is the dead writer's temporary, which never has the target's name.
    assert all(p.name.endswith(".tmp") for p in tmp_path.iterdir() if p.name != "model.dzip")
