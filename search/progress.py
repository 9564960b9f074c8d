"""A one-line progress display: rewritten in place on a terminal, one line per trial in logs."""

from __future__ import annotations

import sys
import time


class Progress:
    """Networks trained/total (and free or failed trials), the current trial and epoch, elapsed time, Pareto size.

    Args:
        total: trials the study should complete.
        quiet: print nothing.
        stream: where to write (stderr by default, so stdout stays for tables).
    """

    def __init__(self, total: int, quiet: bool = False, stream=None) -> None:
        self.total, self.quiet = total, quiet
        self.stream = stream or sys.stderr
        self.live = not quiet and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.done = 0
        self.front = 0
        self.free = ""
        self.current = ""

    def _line(self) -> str:
        m, s = divmod(int(time.perf_counter() - self.t0), 60)
        return f"[{self.done}/{self.total} trained{self.free} | pareto {self.front} | {m:02d}:{s:02d}] {self.current}"

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

    def pareto(self, size: int, counts: dict[str, int]) -> None:
        """After a trial: the front's size and the trials by outcome (``search.results.outcome_counts``)."""
        self.front, self.done = size, counts["trained"]
        free = {"reused": counts["reused"], "over budget": counts["over_budget"],
                "out of memory": counts["out_of_memory"], "failed": counts["failed"]}
        self.free = "".join(f", {n} {what}" for what, n in free.items() if n)
        self._show(final=True)

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
