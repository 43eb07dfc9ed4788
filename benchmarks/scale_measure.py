"""Measuring one benchmark phase: a command in a fresh process, its wall time and peak memory.

`run_measured` runs a command under GNU `/usr/bin/time -v` and, meanwhile, samples the
whole process tree from /proc every 0.2 s. The two peaks answer different questions:

- "Maximum resident set size" (time -v) is the largest RSS any *one* process of the tree
  reached (the kernel's ru_maxrss of the waited-for children), exact but blind to workers
  that run side by side;
- the tree RSS is the *sum* over every process alive at a sample (a process pool's workers
  count), sampled, so it can miss a spike shorter than 0.2 s; it counts shared pages once
  per process that maps them, so the tree PSS (each shared page split between its users)
  is given too, where /proc/PID/smaps_rollup is readable.

A phase that exits non-zero raises `PhaseFailed`, whose message is one line followed by the
last lines of the command's stderr; the callers print it instead of a traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
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


def _memory(pid: int) -> tuple[int, int | None]:
    """(RSS, PSS or None) of one process, in bytes; (0, 0) if it is gone."""
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0, 0
    try:
        found = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M)
        pss = int(found.group(1)) * 1024 if found else None
    except OSError:
        pss = None
    return rss, pss


def tree_memory(root: int) -> tuple[int, int | None, int]:
    """Summed (RSS, PSS or None, process count) of `root` and all its descendants."""
    tree = _children()
    pending, rss, pss, count = [root], 0, 0, 0
    while pending:
        pid = pending.pop()
        r, p = _memory(pid)
        rss += r
        pss = None if pss is None or p is None else pss + p
        count += 1
        pending += tree.get(pid, [])
    return rss, pss, count


class TreeSampler(threading.Thread):
    """Samples the tree under `root` until stopped; keeps the peaks; prints a heartbeat."""

    def __init__(self, root: int, label: str, log: Progress):
        super().__init__(daemon=True)
        self.root, self.label, self.log = root, label, log
        self.peak_rss, self.peak_pss, self.peak_processes = 0, 0, 0
        self.stopped = threading.Event()

    def run(self) -> None:
        started = last_beat = time.perf_counter()
        while not self.stopped.wait(SAMPLE_S):
            rss, pss, count = tree_memory(self.root)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = None if pss is None or self.peak_pss is None else max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, count)
            if time.perf_counter() - last_beat >= HEARTBEAT_S:
                last_beat = time.perf_counter()
                self.log(f"  ... {self.label}: {last_beat - started:.0f} s, tree RSS now {gb(rss)} ({count} processes)")


def _time_report(text: str) -> dict:
    """Peak RSS, elapsed seconds and exit status from GNU time -v's report."""
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    elapsed = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)\s*$", text, re.M)
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


def run_measured(label: str, argv: list[str], logs: Path, log: Progress, env: dict | None = None) -> dict:
    """Run `argv` in a fresh process under `/usr/bin/time -v`, sampling its process tree.

    stdout and stderr go to `logs/<label>.stdout|.stderr` (label made file-safe). Returns
    wall_s (time -v's "Elapsed"), peak_rss_bytes (time -v), peak_tree_rss_bytes,
    peak_tree_pss_bytes (None where unreadable), peak_processes and the stdout path.
    Raises PhaseFailed if the command exits non-zero.
    """
    if not Path("/usr/bin/time").is_file():
        raise PhaseFailed(label, "/usr/bin/time (GNU time) is needed to measure peak RSS; install the 'time' package")
    logs.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^\w.-]+", "-", label).strip("-")
    out_path, err_path, time_path = (logs / f"{stem}.{kind}" for kind in ("stdout", "stderr", "time"))
    log(f"{label}: {' '.join(argv)}")
    started = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(time_path), *argv], stdout=out, stderr=err, env=env)
        sampler = TreeSampler(process.pid, label, log)
        sampler.start()
        returncode = process.wait()
        sampler.stopped.set()
        sampler.join()
    measured = time.perf_counter() - started
    report = _time_report(time_path.read_text() if time_path.is_file() else "")
    if returncode != 0:
        status = report["exit_status"] if report["exit_status"] is not None else returncode
        raise PhaseFailed(label, f"exited with status {status} after {measured:.1f} s", tail(err_path))
    result = {
        "wall_s": report["wall_s"] if report["wall_s"] is not None else measured,
        "peak_rss_bytes": report["peak_rss_bytes"],
        "peak_tree_rss_bytes": sampler.peak_rss or None,
        "peak_tree_pss_bytes": sampler.peak_pss or None,
        "peak_processes": sampler.peak_processes,
        "stdout": str(out_path),
    }
    log(
        f"{label}: done in {result['wall_s']:.1f} s, peak RSS {gb(result['peak_rss_bytes'])}, "
        f"tree {gb(result['peak_tree_rss_bytes'])} ({result['peak_processes']} processes at most)"
    )
    return result
