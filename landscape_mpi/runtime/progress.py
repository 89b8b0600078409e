"""Progress of a surface run, printed by the master: a bar on a terminal, plain lines in a batch log."""

from __future__ import annotations

import datetime
import os
import sys
import time


def _eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    return str(datetime.timedelta(seconds=int(seconds)))


class Progress:
    """Counts finished points. On a terminal a tqdm bar (done/total, points/s, ETA); otherwise one line
    every `every_seconds` seconds, which reads well in a SLURM output file."""

    def __init__(self, total: int, done: int, every_seconds: float = 30.0, stream=None, enabled: bool = True) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.every = every_seconds
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            try:
                width = os.get_terminal_size(self.stream.fileno()).columns
            except (OSError, ValueError, AttributeError):
                width = 0
            # a terminal that reports no width (a fresh pty, some batch consoles) would get an empty bar
            self.bar = tqdm(total=total, initial=done, unit="pt", file=self.stream, desc="surface", smoothing=0.1,
                            dynamic_ncols=width > 0, ncols=None if width > 0 else 100,
                            nrows=None if width > 0 else 24)

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(self.line(), file=self.stream, flush=True)

    def partial(self, fraction: float) -> None:
        """Called between evaluation batches of rank 0's point in progress: in a batch log, a progress line is
        due every `every_seconds` even while one long point runs (its fraction done is shown)."""
        if not self.enabled or self.bar is not None:
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(f"{self.line()}; rank 0's point in progress {100.0 * fraction:.0f}% done",
                  file=self.stream, flush=True)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.t0
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        left = self.total - self.done
        eta = left / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        return f"[{stamp}] surface: {self.done}/{self.total} points ({pct:.1f}%), {rate:.2f} points/s, ETA {_eta(eta)}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(self.line(), file=self.stream, flush=True)
