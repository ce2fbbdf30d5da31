"""Run a tool quietly: its full output goes to a log file, the terminal shows one progress line (tools/misc/demo.py).

The line is drawn from mmengine's own log lines as the tool writes them, so the tools stay unchanged and a
user who types the same command sees mmengine's usual output::

    Epoch(train)  [3][10/24]  ...  loss: 1.2345  ...     -> epoch 3/12, step 10/24, loss 1.23
    Iter(train) [100/300]  ...  loss: 0.2917  ...        -> iteration 100/300, loss 0.29
    Iter(test) [10/32]  ...                              -> batch 10/32
    Iter(val) [32/32]  ...  mIoU: 71.37  ...             -> mIoU 71.37

On a terminal the line is redrawn in place; elsewhere (a CI log, a pipe) it is printed at every quarter of
a training and at the end of every step, so the output stays short either way. A step that fails prints the
last lines of its log and its path, and raises :class:`StepFailed`.
"""
import builtins
import os
import re
import subprocess
import sys
import time
import warnings
from collections import deque
from typing import Dict, Optional, Sequence

# Warnings the pinned stack (mmengine 0.10.7, mmdet 3.3, mmseg 1.2.2 on setuptools >= 80) prints on every run,
# each harmless here: (message prefix, category) as PYTHONWARNINGS takes them, for the processes our entry
# points launch -- nothing is filtered in the packages themselves.
KNOWN_HARMLESS_WARNINGS = (
    ('pkg_resources is deprecated as an API', 'UserWarning'),  # mmengine's and mmcv's package lookups
    ('``build_loss`` would be deprecated soon', 'UserWarning'),  # mmseg's heads build their losses so
    ('Default ``avg_non_ignore`` is False', 'UserWarning'),  # mmseg's CrossEntropyLoss, as in its own configs
    ('The draw is False', 'UserWarning'),  # mmseg's visualization hook when no picture is asked for
    ('`reduce_zero_label` will be deprecated', 'UserWarning'),  # mmseg's LoadAnnotations, set in the dataset too
)
FAILURE_TAIL_LINES = 30
BAR_WIDTH = 24

_PROGRESS = re.compile(r'(Epoch|Iter)\((train|val|test)\)\s*(?:\[(\d+)\])?\s*\[\s*(\d+)/(\d+)\]')
_METRIC = re.compile(r'(?:^|\s)([\w./]+):\s+(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)')


class StepFailed(Exception):
    """A step exited non-zero; the message names its log."""


def quiet_warnings_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``env`` (default: this process's) with :data:`KNOWN_HARMLESS_WARNINGS` added to ``PYTHONWARNINGS``."""
    env = dict(os.environ if env is None else env)
    filters = [f'ignore:{message}:{category}' for message, category in KNOWN_HARMLESS_WARNINGS]
    env['PYTHONWARNINGS'] = ','.join(filter(None, [env.get('PYTHONWARNINGS'), *filters]))
    return env


def silence_known_warnings():
    """Ignore :data:`KNOWN_HARMLESS_WARNINGS` in this process (an entry point calls it before its imports)."""
    for message, category in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings('ignore', message=re.escape(message), category=getattr(builtins, category))


class ProgressLine:
    """Reads mmengine log lines and keeps one line of text saying how far the step is.

    Args:
        label: what the step does, e.g. ``'train Mask R-CNN'``.
        mode: ``'train'`` or ``'test'``: the loop whose lines move the bar (a training's validation lines only
            update the metrics shown).
        total_epochs: the training's epochs (an epoch-based loop's log lines do not say), if known.
        show: the metric names to show (the first one a log line holds), e.g. ``('loss',)``.
    """

    def __init__(self, label: str, mode: str = 'train', total_epochs: Optional[int] = None,
                 show: Sequence[str] = ('loss',)):
        self.label, self.mode, self.total_epochs, self.show = label, mode, total_epochs, tuple(show)
        self.fraction, self.where, self.values = 0.0, '', {}

    def update(self, line: str) -> bool:
        """Take one log line; True if it moved the progress."""
        match = _PROGRESS.search(line)
        if not match:
            return False
        unit, mode, epoch, step, steps = match.groups()
        step, steps = int(step), int(steps)
        if (mode == 'train') != (self.mode == 'train'):
            pass  # a training's validation: its metrics only
        elif unit == 'Epoch' and epoch and self.total_epochs:
            epoch = int(epoch)
            self.fraction = ((epoch - 1) * steps + step) / (self.total_epochs * steps)
            self.where = f'epoch {epoch}/{self.total_epochs}'
        else:
            self.fraction = step / steps
            self.where = f'{"iteration" if mode == "train" else "batch"} {step}/{steps}'
        metrics = dict(_METRIC.findall(line[match.end():]))
        for name in self.show:
            key = next((k for k in metrics if k == name or k.endswith('/' + name)), None)
            if key is not None:
                self.values[name] = float(metrics[key])
        return True

    def text(self, elapsed: float) -> str:
        done = int(round(self.fraction * BAR_WIDTH))
        values = '  '.join(f'{name} {value:.3g}' for name, value in self.values.items())
        return (f'  {self.label:<34} [{"#" * done}{"." * (BAR_WIDTH - done)}] {100 * self.fraction:3.0f}%  '
                f'{self.where:<16} {values}  {elapsed:4.0f} s').rstrip()


def run_step(command: Sequence[str], log_path: str, progress: Optional[ProgressLine] = None,
             cwd: Optional[str] = None, env: Optional[Dict[str, str]] = None, stream=None) -> str:
    """Run ``command`` with its stdout and stderr going to ``log_path``, showing ``progress`` on ``stream``.

    Without ``progress`` (a step with no mmengine loop) nothing is shown while it runs. Returns the last
    line the command printed. Raises :class:`StepFailed` (after printing the log's last lines) if the
    command exits non-zero.
    """
    stream = stream or sys.stdout
    on_terminal = stream.isatty()
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    tail = deque(maxlen=FAILURE_TAIL_LINES)
    start, quarters_shown = time.time(), 0
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED='1')  # lines as they are written
    with open(log_path, 'w') as log, subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            bufsize=1) as process:
        for line in process.stdout:
            log.write(line)
            if line.strip():
                tail.append(line.rstrip('\n'))
            if progress is None or not progress.update(line):
                continue
            if on_terminal:
                stream.write('\r' + progress.text(time.time() - start) + '\033[K')
                stream.flush()
            elif progress.mode == 'train' and quarters_shown < int(progress.fraction * 4) < 4:  # evaluations: short
                quarters_shown = int(progress.fraction * 4)
                print(progress.text(time.time() - start), file=stream, flush=True)
        returncode = process.wait()
    if returncode != 0:
        if on_terminal and progress is not None:
            stream.write('\n')
        print(f'  FAILED (exit status {returncode}). The last lines of {log_path}:', file=stream)
        for line in tail:
            print(f'    {line}', file=stream)
        stream.flush()
        raise StepFailed(f'{" ".join(command)} failed; full log: {log_path}')
    if progress is not None:
        progress.fraction = 1.0
        print(('\r' if on_terminal else '') + progress.text(time.time() - start) + ('\033[K' if on_terminal else ''),
              file=stream, flush=True)
    return tail[-1] if tail else ''
