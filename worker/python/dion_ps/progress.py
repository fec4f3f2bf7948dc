"""ProgressReporter: the progress lines dion-worker prints (worker/train/progress_line.h), for
Python workers, so that `dion local` aggregates, reports and plots them like the C++ workers'.
The line itself is formatted by the C++ owner of the format, through the extension.

    reporter = ProgressReporter(worker=0, optimizer=opt, interval=1.0)
    ... every step: reporter.step(epoch, samples=len(x), loss=loss.item())
    ... after an evaluation: reporter.evaluated(test_loss, test_accuracy, copied_at)
    reporter.finish()

Thread-safety: one training thread.
"""
import sys
import time

from dion_ps import _dion_ps


def format_progress_line(fields):
    """The progress line (no newline) of a dict of ProgressLine's fields."""
    return _dion_ps.format_progress_line(fields)


def parse_progress_line(line):
    """The main fields of a progress line, as `dion local` reads them (InvalidArgumentError
    for a malformed line)."""
    return _dion_ps.parse_progress_line(line)


def format_evaluation_line(samples, test_loss, test_accuracy):
    """`dion-worker --mode=evaluate`'s line: what `dion local` reads as the final accuracy."""
    return _dion_ps.format_evaluation_line(samples, test_loss, test_accuracy)


class ProgressReporter:
    """Prints a progress line every `interval` seconds (and after each evaluation, and a
    "final" one) to `out`, with the client's counters from `optimizer` (a RemoteOptimizer)."""

    def __init__(self, worker, optimizer, interval=1.0, out=sys.stdout):
        self.worker = worker
        self.optimizer = optimizer
        self.interval = interval
        self.out = out
        self.start = time.monotonic()
        self.epoch = 0
        self.steps = 0
        self.samples = 0
        self._last_print = self.start
        self._window_samples = 0
        self._window_loss = 0.0
        self._window_steps = 0
        self._last_loss = 0.0
        self._evaluation = None

    def elapsed(self):
        """Seconds since training started (the clock of elapsed_s and eval_elapsed_s)."""
        return time.monotonic() - self.start

    def step(self, epoch, samples, loss):
        self.epoch = epoch
        self.steps += 1
        self.samples += samples
        self._window_samples += samples
        self._window_loss += loss
        self._window_steps += 1
        if time.monotonic() - self._last_print >= self.interval:
            self.print_line()

    def evaluated(self, test_loss, test_accuracy, copied_at):
        """An evaluation of the weights copied at `copied_at` (seconds, elapsed())."""
        self._evaluation = (test_loss, test_accuracy, copied_at)
        self.print_line()

    def finish(self):
        self.print_line(final=True)

    def print_line(self, final=False):
        now = time.monotonic()
        window = max(now - self._last_print, 1e-9)
        if self._window_steps:
            self._last_loss = self._window_loss / self._window_steps
        stats = self.optimizer.stats()
        accepted = stats["accepted"]
        fields = dict(stats)
        fields.update({
            "final": final, "worker": self.worker, "epoch": self.epoch, "steps": self.steps,
            "samples": self.samples, "elapsed_s": now - self.start,
            "samples_per_s": self._window_samples / window, "loss": self._last_loss,
            "mean_staleness": stats["staleness_sum"] / accepted if accepted else 0.0,
        })
        if self._evaluation is not None:
            fields["test_loss"], fields["test_accuracy"], fields["eval_elapsed_s"] = \
                self._evaluation
        print(format_progress_line(fields), file=self.out, flush=True)
        self._last_print = now
        self._window_samples = 0
        self._window_loss = 0.0
        self._window_steps = 0
