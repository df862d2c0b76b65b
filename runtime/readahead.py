"""Read-ahead for remote scenes: the network's latency hidden behind the engine, not paid per strip.

A strip of a remote scene is many small range requests (one file per band and date); read one
after another, their round trips add up. ``read_ahead`` wraps a scene's date readers so that the
strips ahead of the engine (``DEPTH`` of them) are read by one thread per band file of every
date, all in parallel, each on dataset handles of its own (a GDAL dataset serves one thread at a
time; the downloaded ranges are shared through GDAL's per-file cache). A file's strips are read
in order by its thread: neighbouring strips share a block row, fetched once that way. The wrapped
readers hand the strips out through ``read_into`` as the originals would, so the scene runner is
unchanged. Local scenes are returned as they are: their reads take no round trips.

Memory: ``DEPTH`` strips more than the scene runner's own (one strip is T_in x C_in x tile x
width float32).
"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .remote import gdal_env
from .scene_inputs import DateReader, Grid

DEPTH = 4  # strips read ahead of the one the engine asks for


def read_ahead(readers: list[DateReader], rows: list[int], tile: int, grid: Grid,
               stack: contextlib.ExitStack) -> list:
    """``readers``, reading the strips that start at ``rows`` ahead when any date is remote."""
    if not any(r.date.remote for r in readers):
        return readers
    from rasterio.windows import Window

    windows = [Window(0, y, grid.width, min(tile, grid.height - y)) for y in rows]
    pool = stack.enter_context(ReadAhead(readers, windows))
    return [AheadReader(pool, t, r) for t, r in enumerate(readers)]


class ReadAhead:
    """Reads strips (whole-width windows, in order) of every date ahead, on a pool of threads."""

    def __init__(self, readers: list[DateReader], windows: list, depth: int = DEPTH) -> None:
        self.readers, self.windows, self.depth = readers, windows, depth
        self.index = {int(w.row_off): i for i, w in enumerate(windows)}
        # one thread per (date, file): its strips in order, on its own handles of that date only
        self.threads = {(t, g): ThreadPoolExecutor(max_workers=1, thread_name_prefix="stsun-ahead")
                        for t, r in enumerate(readers)
                        for g in [*range(len(r.groups)), *([None] if r.quality is not None else [])]}
        self.local = threading.local()
        self.stacks: list[contextlib.ExitStack] = []
        self.lock = threading.Lock()
        self.submitted = 0
        # (strip, date) -> (buffer, futures of the band groups' and quality band's validity)
        self.pending: dict[tuple[int, int], tuple[np.ndarray, list[Future]]] = {}

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc) -> None:
        for thread in self.threads.values():  # no read may run on a handle being closed
            thread.shutdown(wait=True, cancel_futures=True)
        for stack in self.stacks:
            stack.close()

    def _own(self, t: int, group: int | None) -> DateReader:
        """This thread's reader of date ``t``, ``group`` (None: the quality band) on its own handles."""
        mine = getattr(self.local, "readers", None)
        if mine is None:
            stack = contextlib.ExitStack()
            with self.lock:
                self.stacks.append(stack)
            mine = self.local.readers = (stack, {})
        stack, readers = mine
        if (t, group) not in readers:
            readers[(t, group)] = self.readers[t].reopen(stack, group)
        return readers[(t, group)]

    def _read(self, t: int, i: int, group: int | None, out: np.ndarray) -> np.ndarray:
        with gdal_env():  # GDAL's options are per thread
            reader = self._own(t, group)
            window = self.windows[i]
            return reader.read_quality(window) if group is None else reader.read_group(group, window, out)

    def _submit_until(self, last: int, dtype) -> None:
        with self.lock:
            while self.submitted <= min(last, len(self.windows) - 1):
                i, w = self.submitted, self.windows[self.submitted]
                for t, r in enumerate(self.readers):
                    out = np.empty((r.profile.c_in, int(w.height), int(w.width)), dtype)
                    groups: list[int | None] = list(range(len(r.groups))) + ([None] if r.quality is not None else [])
                    self.pending[(i, t)] = (out, [self.threads[(t, g)].submit(self._read, t, i, g, out)
                                                  for g in groups])
                self.submitted += 1

    def strip(self, t: int, window, dtype) -> tuple[np.ndarray, np.ndarray]:
        """Date ``t``'s values and validity on ``window``, and the reads of the strips after it started."""
        i = self.index[int(window.row_off)]
        self._submit_until(i + self.depth, dtype)
        with self.lock:
            out, futures = self.pending.pop((i, t))
        valid = np.ones(out.shape[1:], bool)
        for f in futures:
            valid &= f.result()
        return out, valid


class AheadReader:
    """A date reader whose strips come from a ``ReadAhead``; anything else is the wrapped reader's."""

    def __init__(self, pool: ReadAhead, t: int, reader: DateReader) -> None:
        self._pool, self._t, self._reader = pool, t, reader

    def __getattr__(self, name: str):
        return getattr(self._reader, name)

    def read_into(self, window, out: np.ndarray) -> np.ndarray:
        values, valid = self._pool.strip(self._t, window, out.dtype)
        out[...] = values
        return valid


__all__ = ["AheadReader", "DEPTH", "ReadAhead", "read_ahead"]
