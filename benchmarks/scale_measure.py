"""Measuring one benchmark phase: a command in a fresh process, its wall time and peak memory.

`run_measured` runs a command under GNU `/usr/bin/time -v` and, meanwhile, samples the
whole process tree from /proc every 0.2 s. The peaks answer different questions:

- "Maximum resident set size" (time -v) is the largest RSS any *one* process of the tree
  reached (the kernel's ru_maxrss of the waited-for children), exact but blind to workers
  that run side by side;
- the tree RSS is the *sum* over every process alive at a sample (a process pool's workers
  count), sampled, so it can miss a spike shorter than 0.2 s; it counts shared pages once
  per process that maps them, so the tree PSS (each shared page split between its users)
  is given too, where /proc/PID/smaps_rollup is readable, and so is the anonymous part of the
  RSS (RssAnon: heap and tensors, not the file pages of an mmap'd input, which the kernel can
  drop and which RSS counts as they are read).

A phase that exits non-zero raises `PhaseFailed`, whose message is one line followed by the
last lines of the command's stderr; the callers print it instead of a traceback. On a shared
machine a phase whose tree's anonymous RSS passes `max_rss` is killed (its whole session) before the
kernel's OOM killer picks a victim, and fails the same way.
`phase_row` and PHASE_HEADER format a measured phase as a Markdown table row.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SAMPLE_S = 0.2
HEARTBEAT_S = 60.0


class PhaseFailed(Exception):
    """A phase exited non-zero; str() is the line to print, then its stderr's last lines."""

    def __init__(self, label: str, detail: str, stderr_tail: list[str] = ()):
        self.label = label
        lines = [f"FAILED: {label}: {detail}"]
        if stderr_tail:
            lines.append("  last lines of its stderr:")
            lines += [f"    {line}" for line in stderr_tail]
        super().__init__("\n".join(lines))


class Progress:
    """Progress lines on stderr, each prefixed with the seconds since the run started."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:8.1f} s] {text}", file=sys.stderr, flush=True)


def gb(n: float | None) -> str:
    """Bytes as decimal GB with two decimals ('n/a' for None)."""
    return "n/a" if n is None else f"{n / 1e9:.2f} GB"


def _children() -> dict[int, list[int]]:
    """ppid -> pids of every process visible in /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # Field 4 is the ppid; the command name (field 2) may hold spaces and parentheses.
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _memory(pid: int) -> dict[str, int | None]:
    """RSS, its anonymous part and PSS (None if unreadable) of one process, in bytes; zeros
    if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {"rss": 0, "anon": 0, "pss": 0}
    kb = dict(re.findall(r"^(VmRSS|RssAnon):\s+(\d+) kB", status, re.MULTILINE))
    try:
        found = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.MULTILINE)
        pss = int(found.group(1)) * 1024 if found else None
    except OSError:
        pss = None
    return {"rss": int(kb.get("VmRSS", 0)) * 1024, "anon": int(kb.get("RssAnon", 0)) * 1024, "pss": pss}


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    found = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return int(found.group(1)) * 1024


def tree_memory(root: int) -> tuple[dict[str, int | None], int]:
    """Summed rss/anon/pss of `root` and all its descendants, and their count; pss is None
    when some process's smaps_rollup could not be read (not a full sum)."""
    tree = _children()
    pending, total, count = [root], {"rss": 0, "anon": 0, "pss": 0}, 0
    while pending:
        pid = pending.pop()
        for key, value in _memory(pid).items():
            total[key] = None if total[key] is None or value is None else total[key] + value
        count += 1
        pending += tree.get(pid, [])
    return total, count


class TreeSampler(threading.Thread):
    """Samples the tree under `root` until stopped; keeps the peaks; prints a heartbeat; kills
    the session of `root` (started with start_new_session) when the tree's anonymous RSS (what
    exhausts memory; file pages of mmap'd inputs can be reclaimed) passes max_rss."""

    def __init__(self, root: int, label: str, log: Progress, max_rss: int | None):
        super().__init__(daemon=True)
        self.root, self.label, self.log, self.max_rss = root, label, log, max_rss
        self.peak: dict[str, int | None] = {"rss": 0, "anon": 0, "pss": None}
        self.peak_processes = 0
        self.exceeded: int | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        started = last_beat = time.perf_counter()
        while not self.stopped.wait(SAMPLE_S):
            now, count = tree_memory(self.root)
            for key, value in now.items():
                if value is not None:  # a PSS sample racing a process's exit is left out
                    self.peak[key] = max(self.peak[key] or 0, value)
            self.peak_processes = max(self.peak_processes, count)
            if self.max_rss and now["anon"] > self.max_rss and self.exceeded is None:
                self.exceeded = now["anon"]
                os.killpg(self.root, signal.SIGKILL)
            if time.perf_counter() - last_beat >= HEARTBEAT_S:
                last_beat = time.perf_counter()
                self.log(f"  ... {self.label}: {last_beat - started:.0f} s, tree RSS now {gb(now['rss'])}, anonymous {gb(now['anon'])} ({count} processes)")


def _time_report(text: str) -> dict:
    """Peak RSS, elapsed seconds and exit status from GNU time -v's report."""
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    elapsed = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)\s*$", text, re.MULTILINE)
    status = re.search(r"Exit status: (\d+)", text)
    seconds = None
    if elapsed:
        hours, minutes, secs = elapsed.groups()
        seconds = int(hours or 0) * 3600 + int(minutes) * 60 + float(secs)
    return {
        "peak_rss_bytes": int(found.group(1)) * 1024 if found else None,
        "wall_s": seconds,
        "exit_status": int(status.group(1)) if status else None,
    }


def tail(path: Path, lines: int = 8) -> list[str]:
    """The last non-empty lines of a text file (empty if it is missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def check_disk(work: Path, need: int, label: str) -> None:
    """Fail before the work, not during it, when `work` lacks `need` bytes."""
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    if free < need:
        raise PhaseFailed(label, f"needs about {gb(need)} free under {work}, {gb(free)} there (choose --dir)")


def phase_row(label: str, jobs, m: dict, parameters: int | None, reference: int) -> str:
    """One Markdown row of a measured phase (rates and ratios where they apply)."""
    rate = "" if parameters is None else f"{parameters / m['wall_s'] / 1e6:.1f}"
    peak = max(v for v in (m["peak_rss_bytes"], m["peak_tree_rss_bytes"]) if v is not None)
    return (
        f"| {label} | {jobs} | {m['wall_s']:.1f} | {rate} | {gb(m['peak_rss_bytes'])} | {gb(m['peak_tree_rss_bytes'])} "
        f"| {gb(m['peak_tree_anon_bytes'])} | {gb(m['peak_tree_pss_bytes'])} | {m['peak_processes']} | {peak / reference:.2f}x |"
    )


PHASE_HEADER = (
    "| phase | jobs | wall s | M weights/s | peak RSS (time -v) | peak tree RSS | peak tree anon | peak tree PSS | processes "
    "| peak RSS / input size |\n" + "|---" * 10 + "|"
)


def run_measured(label: str, argv: list[str], logs: Path, log: Progress, max_rss: int | None = None) -> dict:
    """Run `argv` in a fresh process under `/usr/bin/time -v`, sampling its process tree.

    stdout and stderr go to `logs/<label>.stdout|.stderr` (label made file-safe). Returns
    wall_s (time -v's "Elapsed"), peak_rss_bytes (time -v), peak_tree_rss_bytes, its
    anonymous part peak_tree_anon_bytes, peak_tree_pss_bytes (None where unreadable),
    peak_processes and the stdout path. Raises PhaseFailed if the command exits non-zero or
    its tree's anonymous RSS passes `max_rss` bytes.
    """
    if not Path("/usr/bin/time").is_file():
        raise PhaseFailed(label, "/usr/bin/time (GNU time) is needed to measure peak RSS; install the 'time' package")
    logs.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^\w.-]+", "-", label).strip("-")
    out_path, err_path, time_path = (logs / f"{stem}.{kind}" for kind in ("stdout", "stderr", "time"))
    log(f"{label}: {shlex.join(argv)}")
    started = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        command = ["/usr/bin/time", "-v", "-o", str(time_path), *argv]
        process = subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True)
        sampler = TreeSampler(process.pid, label, log, max_rss)
        sampler.start()
        try:
            returncode = process.wait()
        except BaseException:  # Ctrl-C reaches this process only (own session): end the phase too
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        finally:
            sampler.stopped.set()
            sampler.join()
    measured = time.perf_counter() - started
    report = _time_report(time_path.read_text() if time_path.is_file() else "")
    if sampler.exceeded is not None:
        detail = f"killed after {measured:.1f} s: its process tree reached {gb(sampler.exceeded)} of anonymous RSS, over the limit of {gb(max_rss)} (--max-rss)"
        raise PhaseFailed(label, detail, tail(err_path))
    if returncode != 0:
        status = report["exit_status"] if report["exit_status"] is not None else returncode
        raise PhaseFailed(label, f"exited with status {status} after {measured:.1f} s", tail(err_path))
    result = {
        "wall_s": report["wall_s"] if report["wall_s"] is not None else measured,
        "peak_rss_bytes": report["peak_rss_bytes"],
        "peak_tree_rss_bytes": sampler.peak["rss"] or None,
        "peak_tree_anon_bytes": sampler.peak["anon"] or None,
        "peak_tree_pss_bytes": sampler.peak["pss"],
        "peak_processes": sampler.peak_processes,
        "stdout": str(out_path),
    }
    log(
        f"{label}: done in {result['wall_s']:.1f} s, peak RSS {gb(result['peak_rss_bytes'])}, "
        f"tree {gb(result['peak_tree_rss_bytes'])}, anonymous {gb(result['peak_tree_anon_bytes'])} "
        f"({result['peak_processes']} processes at most)"
    )
    return result
