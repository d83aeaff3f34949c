"""Progress for long work (training, data generation): a tqdm bar when stderr is a terminal; in a log file or a
pipe, one plain line at most every ``PROGRESS_INTERVAL_S`` seconds and one at the end, with no carriage returns.

``progress(total, desc, unit=..., enabled=..., initial=0)`` returns an object with ``update(n)``,
``set_postfix(**values)``, ``write(message)`` and ``close()`` in either case.
"""

import sys
import time

PROGRESS_INTERVAL_S = 30.0


class LineProgress:
    """Plain progress lines: ``"<desc>: <unit> n/total (p%) k=v ... [t s]"``, at most one per ``interval``."""

    def __init__(self, total: int, initial: int, desc: str, unit: str, interval: float = PROGRESS_INTERVAL_S):
        self.total, self.n, self.desc, self.unit, self.interval = total, initial, desc, unit, interval
        self.postfix, self.t0, self.last, self.shown = {}, time.time(), time.time(), initial

    def _emit(self):
        extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
        print(
            f"{self.desc}: {self.unit} {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%){extra} "
            f"[{time.time() - self.t0:.0f} s]",
            file=sys.stderr,
            flush=True,
        )
        self.last, self.shown = time.time(), self.n

    def update(self, n: int = 1):
        self.n += n
        if time.time() - self.last >= self.interval and self.n < self.total:
            self._emit()

    def set_postfix(self, **values):
        self.postfix = values

    def write(self, message: str):
        print(message, flush=True)

    def close(self):
        if self.n != self.shown:
            self._emit()


class _NoProgress(LineProgress):
    def _emit(self):
        self.shown = self.n


def progress(total: int, desc: str, *, unit: str = "step", enabled: bool = True, initial: int = 0):
    """A tqdm bar on a terminal, plain lines off one, nothing (but ``write``) when not ``enabled``."""
    if not enabled:
        return _NoProgress(total, initial, desc, unit)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
    return LineProgress(total, initial, desc, unit)
