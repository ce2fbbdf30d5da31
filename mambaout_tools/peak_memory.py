"""Peak memory of a code region above the memory in use when it starts (``tools/analysis_tools/benchmark.py``).

CUDA: ``torch.cuda.max_memory_allocated``. CPU: the peak resident set size from ``/proc/self/status``
(VmHWM, reset through ``/proc/self/clear_refs``), else psutil's RSS sampled every millisecond.
"""
import ctypes
import gc
import threading
import time

import torch


class PeakMemory:
    """Peak memory of a code region above the memory in use when it starts, in MiB."""

    def __init__(self, device):
        self.device = device
        self._libc = None
        if device == 'cuda':
            self.method = 'torch.cuda.max_memory_allocated above the memory allocated before the step'
        elif self._clear_refs_works():
            self.method = ('peak RSS above the RSS before the step: /proc/self/status VmHWM, reset via '
                           '/proc/self/clear_refs, after gc + malloc_trim')
        else:
            try:
                import psutil  # noqa: F401
                self.method = 'peak RSS above the RSS before the step: psutil RSS sampled every 1 ms'
            except ImportError:
                self.method = None
        try:
            self._libc = ctypes.CDLL('libc.so.6')
        except OSError:
            pass

    @staticmethod
    def _clear_refs_works():
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            return PeakMemory._status('VmHWM') is not None
        except OSError:
            return False

    @staticmethod
    def _status(field):
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) * 1024
        return None

    def measure(self, fn):
        if self.method is None:
            fn()
            return float('nan')
        gc.collect()
        if self.device == 'cuda':
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        if self._libc is not None:
            self._libc.malloc_trim(0)  # freed heap memory back to the OS, so that reuse shows in RSS
        if 'VmHWM' in self.method:
            base = self._status('VmRSS')
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            fn()
            return (self._status('VmHWM') - base) / 2**20
        import psutil
        proc, peak, done = psutil.Process(), [0], threading.Event()
        base = proc.memory_info().rss

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.001)
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        fn()
        done.set()
        thread.join()
        return (max(peak[0], proc.memory_info().rss) - base) / 2**20
