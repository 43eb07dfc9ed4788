"""Fuzz the .dzip reader: mutated files must decode or raise FormatError, nothing else.

    python benchmarks/fuzz_reader.py --inputs 100000 --seed 0 --json fuzz.json

Each input is a seed file from `fuzzing.seed_files()` (format versions 1, 2 and 3: the
writer's files, the version-2 writer's forms of them and the committed golden files)
changed by one mutator (or a chain of 2-3) from `fuzzing.MUTATORS`, drawn
deterministically from (--seed, index). The parent process generates the inputs and
sends them one at a time to a worker process that runs
`container.from_bytes(data, max_decoded_size=...).state_dict()` and reports the outcome:

- ok / format_error: the reader behaved;
- exception: it raised something other than FormatError (type, message and traceback kept);
- hang: no answer within --timeout-per-input; the worker is killed and a fresh one retries
  the input with a 10x longer limit (--no-confirm-hangs skips that) before it counts;
- crash: the worker died (e.g. SIGSEGV in a numba kernel); it is restarted and the run
  goes on after the input.

The decoded-size cap (--max-decoded-size-mb, default 16) is far below the reader's 64 GiB
default: with rANS a shape edit turns a tiny file into a *valid* one of any decoded size
up to the cap (a certain symbol costs no bits), which would exhaust the worker's memory
without any reader bug. Inputs above the cap are refused by the header (format_error).

Memory: the worker reports its peak RSS (VmHWM) after every input; the baseline is the
peak RSS of a fresh process with the same imports that only decodes the largest undamaged
seed file. The worker also runs under an address-space limit (--memory-limit-mb above its
size after start-up), so that a decoding bomb shows up as an exception instead of taking
the machine down. Exit status 1 if any exception, hang or crash occurred, if the peak
RSS exceeds --max-rss-ratio times the baseline, or if a mutator itself failed. Everything runs on one core.

`--reproduce INDEX` regenerates one input and decodes it in this process, showing the
traceback; `--save-failures DIR` writes every failing input (and a .json describing it).
"""

from __future__ import annotations

import os

# One core: set before numba, torch or numpy start their thread pools. Spawned workers
# inherit the environment.
for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import json
import multiprocessing as mp
import resource
import signal
import sys
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

import click
import fuzzing as fuzz
import torch
from tqdm import tqdm

FAILURES = ("exception", "hang", "crash")
OUTCOMES = ("ok", "format_error", *FAILURES)
EXAMPLES_KEPT = 10


# ---------------------------------------------------------------- worker side


def _proc_status_kb(field: str, pid: int | str = "self") -> int | None:
    """A `kB` line of /proc/<pid>/status (VmHWM = peak RSS, VmSize = address space)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _setup_process() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    torch.set_num_threads(1)


def _baseline(conn, data: bytes, max_decoded_size: int) -> None:
    """Decode one undamaged file, report the peak RSS, exit."""
    _setup_process()
    outcome = fuzz.check_one(data, max_decoded_size)
    conn.send((outcome, _proc_status_kb("VmHWM")))
    conn.close()


def _worker(conn, warmup: bytes, memory_limit_mb: int, max_decoded_size: int) -> None:
    """Decode the inputs the parent sends, one answer per input, until it sends None."""
    _setup_process()
    fuzz.check_one(warmup, max_decoded_size)  # loads the numba kernels before any input is timed
    if memory_limit_mb > 0:
        limit = (_proc_status_kb("VmSize") or 0) * 1024 + memory_limit_mb * (1 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send(("ready", os.getpid(), _proc_status_kb("VmHWM")))
    while True:
        message = conn.recv()
        if message is None:
            conn.send(("bye", _proc_status_kb("VmHWM")))
            return
        index, data = message
        info = None
        try:
            outcome = fuzz.check_one(data, max_decoded_size)
        except Exception as error:  # noqa: BLE001 - any non-FormatError is what we look for
            outcome = "exception"
            info = {
                "type": f"{type(error).__module__}.{type(error).__qualname__}",
                "message": str(error)[:1000],
                "traceback": "".join(traceback.format_exception(error))[-4000:],
            }
        conn.send((index, outcome, info, _proc_status_kb("VmHWM")))


# ---------------------------------------------------------------- parent side


class Worker:
    """A worker process, restarted after a hang or a crash."""

    def __init__(self, ctx, warmup: bytes, memory_limit_mb: int, max_decoded_size: int):
        self.ctx, self.warmup, self.memory_limit_mb = ctx, warmup, memory_limit_mb
        self.max_decoded_size = max_decoded_size
        self.proc = self.conn = None
        self.starts = 0
        self.peak_kb = 0  # max VmHWM over all worker processes

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        args = (child, self.warmup, self.memory_limit_mb, self.max_decoded_size)
        self.proc = self.ctx.Process(target=_worker, args=args, daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(300):
            raise RuntimeError("fuzz worker did not start within 300 s")
        _, _, hwm = self.conn.recv()
        self._peak(hwm)
        self.starts += 1

    def _peak(self, hwm: int | None) -> None:
        if hwm:
            self.peak_kb = max(self.peak_kb, hwm)

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self._peak(_proc_status_kb("VmHWM", self.proc.pid))
            self.proc.kill()
        if self.proc is not None:
            self.proc.join(10)
        self.proc = self.conn = None

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.conn.send(None)
            if self.conn.poll(30):
                _, hwm = self.conn.recv()
                self._peak(hwm)
            self.proc.join(30)
        except (OSError, EOFError):
            pass
        self.kill()

    def run(self, index: int, data: bytes, timeout: float) -> dict:
        """{"outcome": ..., "info": ..., "hwm": ...}; outcome "hang" or "crash" (worker gone)."""
        if self.proc is None:
            self.start()
        try:
            self.conn.send((index, data))
            answered = self.conn.poll(timeout)
            if answered:
                _, outcome, info, hwm = self.conn.recv()
                self._peak(hwm)
                return {"outcome": outcome, "info": info, "hwm": hwm}
        except (EOFError, OSError):
            answered = True  # the pipe broke: the worker died
        if answered or not self.proc.is_alive():
            self.proc.join(5)
            code = self.proc.exitcode
            self.kill()
            try:
                how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
            except ValueError:
                how = f"exit code {code}"
            return {"outcome": "crash", "info": {"type": "crash", "message": how}, "hwm": None}
        self.kill()
        return {"outcome": "hang", "info": {"type": "hang", "message": f"no answer within {timeout:g} s"}, "hwm": None}


def measure_baseline(ctx, data: bytes, max_decoded_size: int) -> int | None:
    """Peak RSS (kB) of a fresh process that imports what the worker does and decodes `data`."""
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_baseline, args=(child, data, max_decoded_size), daemon=True)
    proc.start()
    child.close()
    hwm = None
    if conn.poll(300):
        outcome, hwm = conn.recv()
        if outcome != "ok":
            raise RuntimeError(f"the undamaged seed file did not decode: {outcome}")
    proc.join(30)
    return hwm


def _save(directory: Path | None, kind: str, record: dict, data: bytes) -> None:
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{kind}-{record['index']:07d}-{record['mutators'].replace('+', '-')}"
    (directory / f"{stem}.dzip").write_bytes(data)
    (directory / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")


def _table(rows: dict[str, Counter], first: str) -> str:
    width = max([len(first)] + [len(name) for name in rows])
    lines = [f"{first:<{width}}  " + "  ".join(f"{o:>12}" for o in OUTCOMES) + f"  {'total':>8}"]
    for name, counts in rows.items():
        lines.append(
            f"{name:<{width}}  "
            + "  ".join(f"{counts.get(o, 0):>12}" for o in OUTCOMES)
            + f"  {sum(counts.values()):>8}"
        )
    return "\n".join(lines)


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--inputs", "count", default=100_000, show_default=True, help="Number of mutated inputs.")
@click.option("--seed", default=0, show_default=True, help="Seed of the input generator.")
@click.option("--start", default=0, show_default=True, help="Index of the first input (to resume a run).")
@click.option("--timeout-per-input", default=2.0, show_default=True, help="Seconds before an input counts as a hang.")
@click.option("--confirm-hangs/--no-confirm-hangs", default=True, show_default=True,
              help="Retry a timed-out input in a fresh worker with a 10x limit before calling it a hang.")
@click.option("--mutator", "mutators", multiple=True, type=click.Choice(sorted(fuzz.MUTATORS)),
              help="Only use these mutators (repeatable); default all.")
@click.option("--memory-limit-mb", default=2048, show_default=True,
              help="Address-space limit of the worker above its size after start-up (0: none).")
@click.option("--max-rss-ratio", default=2.0, show_default=True,
              help="Fail if the worker's peak RSS exceeds this multiple of the baseline (0: never).")
@click.option("--max-decoded-size-mb", default=fuzz.FUZZ_MAX_DECODED_SIZE >> 20, show_default=True,
              help="The reader's decoded-size cap (valid files above it are refused from their header).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
@click.option("--save-failures", type=click.Path(file_okay=False, path_type=Path),
              help="Write each failing input (.dzip) and its description (.json) to this folder.")
@click.option("--reproduce", type=int, help="Regenerate input INDEX and decode it in this process, then exit.")
def main(count, seed, start, timeout_per_input, confirm_hangs, mutators, memory_limit_mb, max_rss_ratio,
         max_decoded_size_mb, json_path, save_failures, reproduce):
    torch.set_num_threads(1)
    seeds = fuzz.seed_files()
    pool = list(mutators) or None
    max_decoded_size = max_decoded_size_mb << 20
    if reproduce is not None:
        data, chain, seed_name = fuzz.generate(seeds, seed, reproduce, pool)
        click.echo(f"input {reproduce}: seed file {seed_name} (version {seeds[seed_name][8]}), mutators {chain}, {len(data)} bytes")
        # Any other exception shows its traceback.
        click.echo(f"outcome: {fuzz.check_one(data, max_decoded_size)}")
        return

    ctx = mp.get_context("spawn")
    largest = max(seeds.values(), key=len)
    click.echo(f"seed files: {', '.join(f'{n} (v{d[8]}, {len(d)} B)' for n, d in seeds.items())}")
    baseline_kb = measure_baseline(ctx, largest, max_decoded_size)
    worker = Worker(ctx, largest, memory_limit_mb, max_decoded_size)
    worker.start()

    outcomes, per_mutator, per_length = Counter(), defaultdict(Counter), defaultdict(Counter)
    per_seed = defaultdict(Counter)
    examples: dict[str, list] = {kind: [] for kind in FAILURES}
    slow, memory_events, timings, harness_errors = [], [], [], []
    saved = 0
    generate_s = 0.0
    t0 = time.perf_counter()
    done = 0
    interrupted = False
    try:
        with tqdm(total=count, unit="input", mininterval=1.0, smoothing=0.05, file=sys.stderr) as bar:
            for index in range(start, start + count):
                g0 = time.perf_counter()
                try:
                    data, chain, seed_name = fuzz.generate(seeds, seed, index, pool)
                except Exception as error:  # noqa: BLE001 - a mutator bug must not end a long run
                    harness_errors.append({"index": index, "type": type(error).__name__, "message": str(error),
                                           "traceback": traceback.format_exc()[-2000:]})
                    tqdm.write(f"mutator error at input {index}: {error!r}", file=sys.stderr)
                    bar.update()
                    continue
                r0 = time.perf_counter()
                generate_s += r0 - g0
                peak_before = worker.peak_kb
                result = worker.run(index, data, timeout_per_input)
                elapsed = time.perf_counter() - r0
                if result["outcome"] in ("hang", "crash"):
                    kind = result["outcome"]
                    if kind == "hang" and confirm_hangs:
                        retry = worker.run(index, data, max(10 * timeout_per_input, 30.0))
                        if retry["outcome"] not in ("hang", "crash"):
                            slow.append({"index": index, "mutators": chain, "seed_file": seed_name,
                                         "first_try_s": round(elapsed, 3), "outcome": retry["outcome"]})
                            result = retry
                        else:
                            result["info"]["message"] += f"; again in a fresh worker ({retry['outcome']})"
                    elif kind == "crash":
                        retry = worker.run(index, data, max(10 * timeout_per_input, 30.0))
                        result["info"]["reproduced"] = retry["outcome"] == "crash"
                timings.append((elapsed, index, chain, seed_name))
                if len(timings) > 200:
                    timings = sorted(timings, reverse=True)[:5]
                if worker.peak_kb > peak_before + 1024 and index > start:
                    memory_events.append({"index": index, "mutators": chain, "seed_file": seed_name,
                                          "peak_rss_kb_before": peak_before, "peak_rss_kb_after": worker.peak_kb})
                outcome = result["outcome"]
                outcomes[outcome] += 1
                steps = chain.split("+")
                per_length[f"chain of {len(steps)}"][outcome] += 1
                per_seed[f"{seed_name} (v{seeds[seed_name][8]})"][outcome] += 1
                for name in set(steps):
                    per_mutator[name][outcome] += 1
                if outcome in FAILURES:
                    record = {"index": index, "seed": seed, "seed_file": seed_name, "mutators": chain,
                              "size": len(data), **result["info"]}
                    if len(examples[outcome]) < EXAMPLES_KEPT:
                        examples[outcome].append(record)
                    if saved < 1000:
                        _save(save_failures, outcome, record, data)
                        saved += 1
                    tqdm.write(f"{outcome}: input {index} ({seed_name}, {chain}): "
                               f"{record.get('type')}: {record.get('message', '')[:200]}", file=sys.stderr)
                done += 1
                bar.update()
                if done % 500 == 0:
                    bar.set_postfix({o: outcomes[o] for o in ("ok", *FAILURES)}, refresh=False)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        wall = time.perf_counter() - t0
        worker.stop()
    rusage_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB on Linux
    ratio = worker.peak_kb / baseline_kb if baseline_kb else None
    memory_failed = bool(max_rss_ratio and ratio and ratio > max_rss_ratio)
    timings = sorted(timings, reverse=True)[:5]

    click.echo("")
    click.echo(f"{done} inputs in {wall:.1f} s: {done / wall:.0f} inputs/s "
               f"(generating {generate_s:.1f} s, decoding incl. round trip {wall - generate_s:.1f} s); "
               f"worker started {worker.starts} time(s)" + (" [interrupted]" if interrupted else ""))
    click.echo("\noutcomes:")
    for o in OUTCOMES:
        click.echo(f"  {o:<13} {outcomes.get(o, 0):>8}")
    click.echo("\nper mutator x outcome (an input counts for every mutator in its chain):")
    click.echo(_table(dict(sorted(per_mutator.items())), "mutator"))
    click.echo(_table(dict(sorted(per_length.items())), "chain"))
    click.echo(_table(dict(sorted(per_seed.items())), "seed file"))
    click.echo("\npeak RSS: worker {} MiB, baseline (fresh process decoding {} B) {} MiB, ratio {}; "
               "max over children by getrusage {} MiB".format(
                   round(worker.peak_kb / 1024, 1), len(largest),
                   round(baseline_kb / 1024, 1) if baseline_kb else "?",
                   f"{ratio:.3f}" if ratio else "?", round(rusage_kb / 1024, 1)))
    for event in memory_events[:5]:
        click.echo(f"  peak grew at input {event['index']} ({event['seed_file']}, {event['mutators']}): "
                   f"{event['peak_rss_kb_before'] / 1024:.1f} -> {event['peak_rss_kb_after'] / 1024:.1f} MiB")
    click.echo("slowest inputs: " + ", ".join(f"#{i} {c} {t * 1000:.1f} ms" for t, i, c, _ in timings))
    if slow:
        click.echo(f"{len(slow)} input(s) timed out once but finished in a fresh worker: {slow[:5]}")
    for kind in FAILURES:
        for record in examples[kind]:
            click.echo(f"\n{kind}: input {record['index']} ({record['seed_file']}, {record['mutators']}): "
                       f"{record.get('type')}: {record.get('message')}")
            if record.get("traceback"):
                click.echo(record["traceback"])
    for error in harness_errors[:5]:
        click.echo(f"\nmutator error (not a reader bug) at input {error['index']}:\n{error['traceback']}")
    if memory_failed:
        click.echo(f"\npeak RSS ratio {ratio:.2f} exceeds --max-rss-ratio {max_rss_ratio}")

    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({
            "inputs": done, "seed": seed, "start": start, "interrupted": interrupted,
            "timeout_per_input_s": timeout_per_input, "max_decoded_size": max_decoded_size,
            "elapsed_s": round(wall, 2), "inputs_per_s": round(done / wall, 1),
            "generate_s": round(generate_s, 2), "worker_starts": worker.starts,
            "seed_files": {n: len(d) for n, d in seeds.items()},
            "outcomes": {o: outcomes.get(o, 0) for o in OUTCOMES},
            "per_mutator": {m: {o: c.get(o, 0) for o in OUTCOMES} for m, c in sorted(per_mutator.items())},
            "per_chain_length": {m: {o: c.get(o, 0) for o in OUTCOMES} for m, c in sorted(per_length.items())},
            "per_seed_file": {m: {o: c.get(o, 0) for o in OUTCOMES} for m, c in sorted(per_seed.items())},
            "peak_rss_kb": {"worker": worker.peak_kb, "baseline": baseline_kb,
                            "ratio": round(ratio, 4) if ratio else None, "rusage_children_max": rusage_kb,
                            "max_ratio": max_rss_ratio, "exceeded": memory_failed},
            "memory_events": memory_events[:20],
            "slowest": [{"index": i, "mutators": c, "seed_file": s, "seconds": round(t, 4)} for t, i, c, s in timings],
            "slow_but_finished": slow[:20],
            "failures": examples,
            "mutator_errors": harness_errors[:20],
        }, indent=2) + "\n")
    failed = any(outcomes.get(kind) for kind in FAILURES) or memory_failed or bool(harness_errors)
    sys.exit(1 if failed or interrupted else 0)


if __name__ == "__main__":
    main()
