"""A one-line progress display: rewritten in place on a terminal, one line per trial in logs.

The ETA is the networks still to train times the median wall time per trained network in this
run: the time between one trained trial's end and the previous one's (the first from the
start of the run), so sampling, tracking and free proposals in between are counted. Several
trained trials seen at once (other workers') share their interval. ``eta --`` until one is done.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable


def format_eta(seconds: float | None) -> str:
    """``eta --`` (not known yet), ``eta 42s``, ``eta 3m05s``, ``eta 2h07m``."""
    if seconds is None:
        return "eta --"
    s = max(0, round(seconds))
    if s < 60:
        return f"eta {s}s"
    if s < 3600:
        return f"eta {s // 60}m{s % 60:02d}s"
    return f"eta {s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Networks trained/total (and free or failed trials), the current trial and epoch, elapsed time, Pareto size.

    Args:
        total: trials the study should complete.
        budget_epochs: the study's training-epoch budget, shown beside the trials when set.
        quiet: print nothing.
        stream: where to write (stderr by default, so stdout stays for tables).
        clock: seconds (monotonic); tests pass their own.
    """

    def __init__(self, total: int, quiet: bool = False, stream=None,
                 clock: Callable[[], float] = time.perf_counter, budget_epochs: float | None = None) -> None:
        self.total, self.quiet, self.budget = total, quiet, budget_epochs
        self.epochs = 0.0  # training epochs spent by the study (search.budget_epochs)
        self.stream = stream or sys.stderr
        self.live = not quiet and self.stream.isatty()
        self.clock = clock
        self.t0 = clock()
        self.done = 0
        self.front = 0
        self.free = ""
        self.current = ""
        self.last_end = self.t0  # when the last trained trial of this run ended (or the run started)
        self.per_trained: list[float] = []  # this run's seconds per trained network

    def eta_s(self) -> float | None:
        """Seconds until ``total`` networks are trained, or None before one is trained in this run."""
        if not self.per_trained:
            return None
        return max(0, self.total - self.done) * statistics.median(self.per_trained)

    def _line(self) -> str:
        m, s = divmod(int(self.clock() - self.t0), 60)
        budget = f" | {self.epochs:g}/{self.budget:g} epochs" if self.budget is not None else ""
        return (f"[{self.done}/{self.total} trained{self.free}{budget} | pareto {self.front} | {m:02d}:{s:02d} | "
                f"{format_eta(self.eta_s())}] {self.current}")

    def _show(self, final: bool = False) -> None:
        if self.quiet:
            return
        if self.live:
            self.stream.write("\r\033[K" + self._line() + ("\n" if final else ""))
        elif final:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def start(self, done: int) -> None:
        self.done = done
        self.last_end = self.clock()
        self._show()

    def trial_started(self, number: int, name: str) -> None:
        self.current = f"trial {number}: {name}"
        self._show()

    def epoch(self, record) -> None:
        head = self.current.split(" | epoch")[0]
        self.current = f"{head} | epoch {record.epoch} val {record.val_accuracy:.3f}"
        self._show()

    def note(self, text: str) -> None:
        self.current += f" | {text}"
        self._show()

    def trial_finished(self, number: int, status: str) -> None:
        self.current += f" -> {status.lower()}"

    def pareto(self, size: int, counts: dict[str, int], epochs: float = 0.0) -> None:
        """After a trial: the front's size, the trials by outcome (``search.results.outcome_counts``), epochs spent."""
        self.epochs = round(epochs, 2)
        new = counts["trained"] - self.done
        if new > 0:  # trained trials ended since the last one seen (several: other workers' too)
            now = self.clock()
            self.per_trained += [(now - self.last_end) / new] * new
            self.last_end = now
        self.front, self.done = size, counts["trained"]
        free = {"pruned": counts.get("pruned", 0), "reused": counts["reused"], "over budget": counts["over_budget"],
                "out of memory": counts["out_of_memory"], "failed": counts["failed"]}
        self.free = "".join(f", {n} {what}" for what, n in free.items() if n)
        self._show(final=True)

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
