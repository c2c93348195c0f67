"""Progress of long steps (indexing, loading and training epochs, whitening): a tqdm bar on a terminal; where the
output goes to a file or a pipe, a plain line every `every` seconds (default 30, `RSIR_PROGRESS_EVERY` sets it)
with the count, rate and time left, and one when the step ends - a bar redrawn into a log file is noise, and no
output at all for minutes looks like a hang."""
from __future__ import annotations

import os
import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """`update(n)` / `set(done, total)` as work is done, `postfix(**stats)` for figures to show, `close()` at the
    end (or `with Progress(...) as bar:`). Nothing at all when `quiet`."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", quiet: bool = False,
                 every: float | None = None, stream=None, leave: bool = True, resumable: bool = False):
        self.desc, self.total, self.unit, self.quiet = desc, total, unit, quiet
        self.stream = stream or sys.stderr
        self.every = float(os.environ.get("RSIR_PROGRESS_EVERY", 30.0)) if every is None else every
        self.done, self.stats = 0, {}
        # work done before this run: with `resumable`, the first `set` says where a resumed run starts
        self.base: int | None = None if resumable else 0
        self.t0 = self.last = time.perf_counter()
        self.lines = 0
        self.bar = None
        if not quiet and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.1, delay=0.2,
                            leave=leave, file=self.stream)

    def set(self, done: int, total: int | None = None) -> None:
        """Absolute progress (`done` of `total`). With `resumable`, the first call's `done` is work of an earlier
        run (a resumed one): said at once, and left out of the rate."""
        if total is not None and total != self.total:
            self.total = total
            if self.bar is not None:
                self.bar.total = total
                self.bar.refresh()
        if self.base is None:
            self.base = self.done = done
            if done and self.bar is not None:
                self.bar.initial = self.bar.n = self.bar.last_print_n = done
                self.bar.refresh()
            elif done and not self.quiet:
                share = f" ({100 * done / self.total:.0f} %)" if self.total else ""
                print(f"{self.desc}: resuming at {done}/{self.total or '?'} {self.unit}{share}", file=self.stream,
                      flush=True)
            return
        self.update(done - self.done)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif not self.quiet and time.perf_counter() - self.last >= self.every:
            self._line()

    def postfix(self, **stats) -> None:
        self.stats = stats
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3f}" if isinstance(v, float) else v for k, v in stats.items()})

    def _line(self, final: bool = False) -> None:
        now = time.perf_counter()
        self.last = now
        elapsed = now - self.t0
        rate = (self.done - (self.base or 0)) / elapsed if elapsed > 0 else 0.0
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        if final:
            text = f"{self.desc}: {count} {self.unit} in {_clock(elapsed)} ({rate:.1f} {self.unit}/s)"
        else:
            left = (f", {_clock((self.total - self.done) / rate)} left" if self.total and rate > 0 else "")
            share = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
            text = f"{self.desc}: {count} {self.unit}{share}, {rate:.1f} {self.unit}/s{left}"
        stats = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in self.stats.items())
        print(text + (f"; {stats}" if stats else ""), file=self.stream, flush=True)
        self.lines += 1

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.quiet and (self.lines or time.perf_counter() - self.t0 >= self.every):
            self._line(final=True)  # a step long enough to report ends with a line
