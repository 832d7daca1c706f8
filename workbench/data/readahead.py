"""Page-cache read-ahead for samplers gathering scattered rows of memory-mapped stores.

Stores larger than RAM (``io_hints``): gathering frames through the memmap page-faults one page at
a time (numpy's gather runs in one thread, and a fault blocks it), so the disk sees one request at
a time. Before gathering batch ``i`` a sampler therefore tells the kernel every byte range the
batch will read (``posix_fadvise(POSIX_FADV_WILLNEED)`` on the file: one page-aligned range per
sample, the contiguous rows ``p-3 .. p+n_step`` of a transition or ``p .. p+L-1`` of a segment), so
the reads are queued at once and served concurrently; a background thread does the same for the
``hint_ahead`` following batches while batch ``i`` is assembled. Hints only warm the page cache:
the bytes read, and so every batch, are unchanged. When the hints stop causing any disk reads
(the store is in RAM) they pause, and resume at the first major page fault (:class:`ReadHints`).
"""

from __future__ import annotations

import mmap as mmap_mod
import os
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

try:
    import resource
except ImportError:  # not on Windows (a standard-library module, not ours)
    resource = None  # type: ignore[assignment]

import numpy as np

_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)  # None where the OS has no posix_fadvise
PAGE = mmap_mod.PAGESIZE
MAX_HINT_AHEAD = 16


def _file_region(a: Any) -> tuple[str, int] | None:
    """(path, byte offset of row 0) when ``a`` is a C-contiguous memmap opened on a file (not a view)."""
    if not isinstance(a, np.memmap) or getattr(a, "filename", None) is None or not isinstance(a.base, mmap_mod.mmap):
        return None
    if not a.flags.c_contiguous or a.ndim < 1:
        return None
    return str(a.filename), int(a.offset)


_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None) if resource is not None else None
SKIP_AFTER = 1024  # hinted ranges per verdict on whether hints still make the kernel read anything
MISS_FRACTION = 0.005  # hints pause below this fraction of hinted pages read from disk, resume above it


def thread_io() -> tuple[int, int] | None:
    """(block input operations, major faults) of the calling thread so far; None where unknown."""
    if _RUSAGE_THREAD is None:
        return None
    r = resource.getrusage(_RUSAGE_THREAD)
    return r.ru_inblock, r.ru_majflt


_HINT_POOL: ThreadPoolExecutor | None = None
_HINT_POOL_LOCK = threading.Lock()


def hint_pool() -> ThreadPoolExecutor:
    """One background thread per process issues the look-ahead hints of every sampler."""
    global _HINT_POOL
    with _HINT_POOL_LOCK:
        if _HINT_POOL is None:
            _HINT_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sampler-hints")
        return _HINT_POOL


def _forget_hint_pool() -> None:
    global _HINT_POOL
    _HINT_POOL = None  # a forked child has none of the parent's threads: start its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_hint_pool)


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class ReadHints:
    """Asks the kernel to start reading row ranges of memory-mapped arrays (one array per game).

    Each array that is a memmap of a file gets its own read-only descriptor, on which
    ``posix_fadvise(WILLNEED)`` queues asynchronous reads of whole pages (it releases the GIL and
    does not wait for the data). Arrays in memory, or an OS without ``posix_fadvise``, get no hints.
    Advisory only: any ``OSError`` turns hints off for good, it never fails a batch.

    A store in RAM needs no hints, and they still cost ~4 us of CPU per range (~10-15% of a batch
    assembled from RAM). The thread's block-input counter tells how much a batch's hints made the
    kernel read: when, over ``SKIP_AFTER`` hinted ranges, less than ``MISS_FRACTION`` of the hinted
    pages came from disk, hints pause; while paused, a gather whose major page faults (pages read
    from disk) exceed ``MISS_FRACTION`` of the pages it touched resumes them from the next batch on.
    Where per-thread counters do not exist, hints never pause.
    """

    def __init__(self, arrays: Sequence[Any]) -> None:
        self._fd: list[int | None] = []
        self._off: list[int] = []
        self._row_bytes: list[int] = []
        self._rows: list[int] = []
        fds: list[int] = []
        for a in arrays:
            region = _file_region(a) if _WILLNEED is not None else None
            fd = None
            if region is not None:
                try:
                    fd = os.open(region[0], os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                    fds.append(fd)
                except OSError:
                    fd = None
            self._fd.append(fd)
            self._off.append(region[1] if region else 0)
            self._row_bytes.append(int(a.strides[0]) if region else 0)
            self._rows.append(int(a.shape[0]) if region else 0)
        self.active = bool(fds)
        self._claimed: set[int] = set()
        self._order: deque[int] = deque()
        self._lock = threading.Lock()
        self.ranges_issued = 0  # number of posix_fadvise calls (for tests and benchmarks)
        self._paused = False
        self._win = [0, 0, 0]  # this verdict's window: ranges hinted, pages hinted, pages read
        self.pauses = self.resumes = 0
        self._finalizer = weakref.finalize(self, _close_fds, fds)

    @property
    def paused(self) -> bool:
        return self._paused

    def claim(self, batch_index: int) -> bool:
        """True the first time a batch index is claimed (its hints are then issued by the caller)."""
        with self._lock:
            if batch_index in self._claimed:
                return False
            self._claimed.add(batch_index)
            self._order.append(batch_index)
            while len(self._order) > 4 * MAX_HINT_AHEAD + 64:
                self._claimed.discard(self._order.popleft())
            return True

    def issue(self, spans: Sequence[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Hint rows ``[lo[k], hi[k])`` of array ``g`` for every ``(g, lo, hi)`` in ``spans``."""
        io0, n, nbytes = thread_io(), 0, 0
        for g, lo, hi in spans:
            fd = self._fd[g]
            if fd is None or not self.active or not len(lo):
                continue
            rb, off, rows = self._row_bytes[g], self._off[g], self._rows[g]
            lo = np.clip(np.asarray(lo, dtype=np.int64), 0, rows)
            hi = np.clip(np.asarray(hi, dtype=np.int64), 0, rows)
            b0 = (off + lo * rb) // PAGE * PAGE
            b1 = off + hi * rb
            order = np.argsort(b0, kind="stable")
            b0, b1 = b0[order], b1[order]
            # merge overlapping or touching ranges: one request each
            reach = np.maximum.accumulate(b1)
            new = np.ones(len(b0), dtype=bool)
            new[1:] = b0[1:] > reach[:-1]
            first = np.flatnonzero(new)
            ends = reach[np.r_[first[1:] - 1, len(b0) - 1]]
            try:
                for s, e in zip(b0[first].tolist(), ends.tolist()):
                    if e > s:
                        os.posix_fadvise(fd, s, e - s, _WILLNEED)  # type: ignore[arg-type]
            except OSError:
                self.active = False
                return
            n += len(first)
            nbytes += int((ends - b0[first]).sum())
        self.ranges_issued += n
        io1 = thread_io()
        if io0 is not None and io1 is not None and n:
            w = self._win
            w[0] += n
            w[1] += nbytes // PAGE + n
            w[2] += (io1[0] - io0[0]) * 512 // PAGE  # ru_inblock counts 512-byte blocks
            if w[0] >= SKIP_AFTER:
                if w[2] < MISS_FRACTION * w[1] and not self._paused:
                    self._paused = True  # the store is (practically) in RAM
                    self.pauses += 1
                self._win = [0, 0, 0]

    def issue_later(self, spans: Sequence[tuple[int, np.ndarray, np.ndarray]]) -> None:
        hint_pool().submit(self.issue, spans)

    def watch(self) -> tuple[int, int] | None:
        """While paused: the thread's counters before a gather, for :meth:`check`."""
        return thread_io() if self._paused else None

    def check(self, before: tuple[int, int] | None, pages: int) -> None:
        """After a gather of about ``pages`` pages started while paused: resume hints when more
        than ``MISS_FRACTION`` of them were major faults (read from disk)."""
        if before is None:
            return
        now = thread_io()
        if now is not None and now[1] - before[1] > MISS_FRACTION * pages and self._paused:
            self._paused = False
            self._win = [0, 0, 0]
            self.resumes += 1
