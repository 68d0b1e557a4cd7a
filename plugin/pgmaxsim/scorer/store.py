"""What the scorer holds: each index's rows packed in one token buffer (host or GPU).

An :class:`IndexStore` maps row ids (``id::text``) to *slots*; a slot is a
token range of the backend's append-only buffer plus the row's ``version``.
An update appends the new tokens to a new slot and tombstones the old one;
when tombstones pass a quarter of the buffer it is compacted into a new one.
Readers copy the slot ranges they need under the lock and score outside it:
appends only write past every published range, and a reallocated or
compacted buffer is a new object, so a reader keeps scoring its old one.

State mirrors the token table at one snapshot, ``watermark`` (the scorer's
sync transaction). ``journal`` lists ``(xid, row_id)`` of the changes applied
since the initial load, kept for ``journal_seconds``: a caller whose snapshot
does not see some of those transactions gets those rows back as *dirty* and
scores them itself; a caller older than the journal (``xmin < horizon``) is
told ``snapshot_too_old``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pgmaxsim.kernels import numpy_maxsim as cpu
from pgmaxsim.registry import IndexSpec
from pgmaxsim.scorer.protocol import ScorerError, Snapshot


class OutOfMemory(Exception):
    """The backend cannot hold an index (GPU out of memory, or over --max-memory)."""


# ------------------------------------------------------------------ backends

class CpuBuffer:
    """Growable host token buffer in the index's stored tier: fp16, or int8 codes + one
    float32 scale per token (scored as stored: the kernels dequantize per chunk).

    Subclasses hold the buffer elsewhere (:class:`GpuBuffer`): ``xp`` is its array module,
    ``width`` its row width, ``_rows`` lays host rows out for it."""

    xp: Any = np

    def __init__(self, dim: int, backend: "CpuBackend", int8: bool = False) -> None:
        self.dim = dim
        self.backend = backend
        self.int8 = int8
        self.width = self._width()
        self.tokens = self.xp.empty((0, self.width), dtype=np.int8 if int8 else np.float16)
        self.scales = self.xp.empty(0, dtype=np.float32) if int8 else None
        self.size = 0

    def _width(self) -> int:
        return self.dim

    def _rows(self, t: np.ndarray) -> np.ndarray:
        """Host rows ``(n, dim)`` in the buffer's dtype -> ``(n, width)`` as the buffer holds them."""
        return t

    @property
    def nbytes(self) -> int:
        return int(self.tokens.nbytes) + (int(self.scales.nbytes) if self.scales is not None else 0)

    def append(self, t: np.ndarray, scales: np.ndarray | None = None) -> int:
        t, scales = _as_tier(t, scales, self.int8)
        rows = self._rows(np.asarray(t, dtype=self.tokens.dtype))
        n = rows.shape[0]
        if self.size + n > self.tokens.shape[0]:
            self._grow(max(1024, int((self.size + n) * 1.5)))
        start = self.size
        self.tokens[start: start + n] = self.xp.asarray(rows)
        if self.scales is not None:
            self.scales[start: start + n] = self.xp.asarray(scales)
        self.size += n
        return start

    def _grow(self, cap: int) -> None:
        per = self.width * self.tokens.itemsize + (4 if self.int8 else 0)
        self.backend.reserve(cap * per - self.nbytes)
        new = self.xp.empty((cap, self.width), dtype=self.tokens.dtype)
        new[: self.size] = self.tokens[: self.size]
        self.tokens = new
        if self.scales is not None:
            ns = self.xp.empty(cap, dtype=np.float32)
            ns[: self.size] = self.scales[: self.size]
            self.scales = ns

    def release(self) -> None:
        self.backend.reserve(-self.nbytes)
        self.tokens = self.tokens[:0].copy()
        self.scales = None if self.scales is None else self.scales[:0].copy()

    def view(self) -> Any:
        return self.tokens if self.scales is None else (self.tokens, self.scales)


def _as_tier(t: np.ndarray, scales: np.ndarray | None, int8: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Tokens in a buffer's tier: int8 codes + scales stay as read (never re-quantized);
    float rows are quantized for an int8 buffer; int8 rows are dequantized for an fp16 one."""
    from pgmaxsim.kernels.quantize import dequantize_int8, quantize_int8

    if int8:
        return (t, np.asarray(scales, dtype=np.float32)) if scales is not None else quantize_int8(t)
    return (dequantize_int8(t, scales) if scales is not None else t), None


class CpuBackend:
    name = "cpu"

    def __init__(self, max_memory: int | None = None) -> None:
        self.max_memory = max_memory
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> None:
        with self._lock:
            if nbytes > 0 and self.max_memory is not None and self.used + nbytes > self.max_memory:
                raise OutOfMemory(f"needs {(self.used + nbytes) / 2**20:.1f} MiB, the limit is "
                                  f"{self.max_memory / 2**20:.1f} MiB")
            self.used += nbytes

    def buffer(self, dim: int, int8: bool = False) -> CpuBuffer:
        return CpuBuffer(dim, self, int8)

    def score(self, query: np.ndarray, view: Any, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        tokens, scales = view if isinstance(view, tuple) else (view, None)
        return cpu.maxsim_ranges(query, tokens, starts, lengths, scales)



class GpuBuffer(CpuBuffer):
    """The token buffer on the GPU: rows zero-padded to the kernels' chunk width."""

    def __init__(self, dim: int, backend: "GpuBackend", int8: bool = False) -> None:
        from pgmaxsim.kernels import cupy_maxsim as gpu

        self.gpu = gpu
        self.xp = gpu.cupy()
        super().__init__(dim, backend, backend.int8 or int8)

    def _width(self) -> int:
        return self.gpu.padded_dim(self.dim, self.int8)

    def _rows(self, t: np.ndarray) -> np.ndarray:
        out = np.zeros((t.shape[0], self.width), dtype=t.dtype)
        out[:, : self.dim] = t
        return out

    def append(self, t: np.ndarray, scales: np.ndarray | None = None) -> int:
        try:
            return super().append(t, scales)
        except self.xp.cuda.memory.OutOfMemoryError as exc:
            raise OutOfMemory(f"GPU out of memory ({exc})") from None

    def view(self) -> Any:
        return self.gpu.DeviceTokens(self.tokens, self.scales, self.dim)


class GpuBackend(CpuBackend):
    name = "gpu"

    def __init__(self, max_memory: int | None = None, int8: bool = False, device: int = 0) -> None:
        from pgmaxsim.kernels import cupy_maxsim as gpu

        cp = gpu.cupy()
        cp.cuda.Device(device).use()
        if max_memory is None:
            free, _total = cp.cuda.runtime.memGetInfo()
            max_memory = int(free * 0.9)
        super().__init__(max_memory)
        self.int8 = int8
        self.device = device

    def buffer(self, dim: int, int8: bool = False) -> GpuBuffer:  # type: ignore[override]
        return GpuBuffer(dim, self, int8)

    def score(self, query: np.ndarray, view: Any, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        from pgmaxsim.kernels import cupy_maxsim as gpu

        return gpu.cupy().asnumpy(gpu.maxsim_items(query, view, starts, lengths))


def make_backend(kind: str = "auto", max_memory: int | None = None, int8: bool = False) -> CpuBackend:
    """``auto``: the GPU when CuPy sees one, else the CPU."""
    if kind not in ("auto", "cpu", "gpu"):
        raise ValueError(f"backend must be auto, cpu or gpu, got {kind!r}")
    if kind == "cpu":
        return CpuBackend(max_memory)
    from pgmaxsim.kernels import cupy_maxsim as gpu

    if kind == "gpu" or gpu.available():
        return GpuBackend(max_memory, int8=int8)
    return CpuBackend(max_memory)


# ------------------------------------------------------------------ one index

@dataclass
class Row:
    id: str
    version: int
    tokens: np.ndarray      # (n, dim): fp16/float, or int8 codes with ``scales``
    scales: np.ndarray | None = None  # (n,) float32 per-token scales of int8 codes


@dataclass
class IndexStore:
    meta: IndexSpec
    backend: CpuBackend
    journal_seconds: float = 600.0
    state: str = "loading"
    error: str | None = None
    watermark: Snapshot | None = None
    horizon: int = 0
    synced_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.buf = self.backend.buffer(self.meta.dim, int8=self.meta.storage == "int8")
        self.slot_of: dict[str, int] = {}
        self.slot_id: list[str | None] = []
        self.starts = np.zeros(0, dtype=np.int64)
        self.lengths = np.zeros(0, dtype=np.int64)
        self.versions = np.zeros(0, dtype=np.int64)
        self.n_slots = 0
        self.dead_tokens = 0
        self.journal: list[tuple[int, str]] = []
        self._syncs: deque[tuple[float, int]] = deque()
        self._alive: np.ndarray | None = None

    # -- writes (the sync thread)
    def _grow(self, n: int) -> None:
        if self.n_slots + n > len(self.starts):
            cap = max(64, int((self.n_slots + n) * 1.5))
            for name in ("starts", "lengths", "versions"):
                old = getattr(self, name)
                new = np.zeros(cap, dtype=old.dtype)
                new[: self.n_slots] = old[: self.n_slots]
                setattr(self, name, new)

    def apply(self, rows: Sequence[Row], deleted: Sequence[str], watermark: Snapshot,
              journal: Sequence[tuple[int, str]] = (), initial: bool = False) -> None:
        """Upsert ``rows``, drop ``deleted``, move the watermark (one sync's worth)."""
        # Token uploads happen outside the lock (they only write past published ranges).
        placed: list[tuple[Row, int]] = []
        for r in rows:
            cur = self.slot_of.get(r.id)
            if cur is not None and self.versions[cur] == r.version:
                continue
            t = np.asarray(r.tokens)
            if t.ndim != 2 or (t.shape[0] and t.shape[1] != self.meta.dim):
                raise ValueError(f"row {r.id!r} has tokens of shape {t.shape}, index dim is {self.meta.dim}")
            start = self.buf.append(t, r.scales) if t.shape[0] else 0
            placed.append((r, start))
        with self.lock:
            self._grow(len(placed))
            for r, start in placed:
                old = self.slot_of.get(r.id)
                if old is not None:
                    self._kill(old)
                s = self.n_slots
                self.starts[s] = start
                self.lengths[s] = r.tokens.shape[0]
                self.versions[s] = r.version
                self.slot_id.append(r.id)
                self.slot_of[r.id] = s
                self.n_slots += 1
            for i in deleted:
                old = self.slot_of.pop(i, None)
                if old is not None:
                    self._kill(old, pop=False)
            self._alive = None
            self.watermark = watermark
            now = time.time()
            self.synced_at = now
            if initial:
                self.horizon = watermark.xmax
            else:
                self.journal.extend(journal)
                self._syncs.append((now, watermark.xmin))
                while self._syncs and now - self._syncs[0][0] > self.journal_seconds:
                    self.horizon = max(self.horizon, self._syncs.popleft()[1])
                if self.journal and self.journal[0][0] < self.horizon:
                    self.journal = [e for e in self.journal if e[0] >= self.horizon]
                self.state = "ready"
        if self.dead_tokens > max(4096, self.buf.size // 4):
            self.compact()

    def _kill(self, slot: int, pop: bool = True) -> None:
        rid = self.slot_id[slot]
        if pop and rid is not None and self.slot_of.get(rid) == slot:
            del self.slot_of[rid]
        self.slot_id[slot] = None
        self.dead_tokens += int(self.lengths[slot])
        self.lengths[slot] = 0

    def compact(self) -> None:
        """Rewrite the live rows into a fresh buffer (drops tombstones)."""
        with self.lock:
            alive = self._alive_slots()
            old_view = self.buf.view()
            starts, lengths = self.starts[alive].copy(), self.lengths[alive].copy()
            ids = [self.slot_id[s] for s in alive]
            versions = self.versions[alive].copy()
        new = self.backend.buffer(self.meta.dim, int8=self.meta.storage == "int8")
        host, host_scales = _host_tokens(old_view)
        new_starts = np.zeros(len(alive), dtype=np.int64)
        for j, (s, n) in enumerate(zip(starts, lengths)):
            sc = None if host_scales is None else host_scales[s: s + n]
            new_starts[j] = new.append(host[s: s + n], sc) if n else 0
        with self.lock:
            # rows changed meanwhile are not possible: compact runs on the sync thread
            old_buf = self.buf
            self.buf = new
            self.starts = new_starts
            self.lengths = lengths.astype(np.int64)
            self.versions = versions
            self.slot_id = list(ids)
            self.slot_of = {i: j for j, i in enumerate(ids) if i is not None}
            self.n_slots = len(ids)
            self.dead_tokens = 0
            self._alive = None
        old_buf.release()

    def release(self) -> None:
        with self.lock:
            self.buf.release()
            self.slot_of.clear()
            self.n_slots = 0
            self.state = "dropped"

    # -- reads (request threads)
    def _alive_slots(self) -> np.ndarray:
        if self._alive is None:
            ids = self.slot_id
            self._alive = np.fromiter((s for s in range(self.n_slots) if ids[s] is not None), dtype=np.int64)
        return self._alive

    @property
    def rows(self) -> int:
        return len(self.slot_of)

    @property
    def tokens(self) -> int:
        return int(self.buf.size - self.dead_tokens)

    def _check_ready(self) -> None:
        if self.state != "ready":
            raise ScorerError("not_ready", f"index {self.meta.name!r} is {self.state}"
                              + (f": {self.error}" if self.error else ""))

    def score(self, query: np.ndarray, ids: Sequence[str], versions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores (n,), found (n,) bool): found where the held version equals the asked one."""
        with self.lock:
            self._check_ready()
            slots = np.fromiter((self.slot_of.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
            ok = slots >= 0
            ok[ok] = self.versions[slots[ok]] == versions[ok]
            sel = slots[ok]
            starts, lengths = self.starts[sel].copy(), self.lengths[sel].copy()
            view = self.buf.view()
        scores = np.full(len(ids), np.nan, dtype=np.float32)
        if sel.size:
            scores[ok] = self.backend.score(query, view, starts, lengths)
        return scores, ok

    def search(self, query: np.ndarray, k: int, snapshot: Snapshot, exclude: Sequence[str] = ()
               ) -> dict[str, Any]:
        """Top-k over the rows the caller's snapshot sees at the held version (see module doc)."""
        with self.lock:
            self._check_ready()
            if snapshot.xmin < self.horizon:
                raise ScorerError("snapshot_too_old", f"the caller's snapshot (xmin {snapshot.xmin}) is older "
                                  f"than the scorer's change journal (horizon {self.horizon})")
            dirty = sorted({rid for xid, rid in self.journal if not snapshot.sees(xid)})
            alive = self._alive_slots()
            skip = [self.slot_of[i] for i in (*dirty, *exclude) if i in self.slot_of]
            if skip:
                alive = np.setdiff1d(alive, np.asarray(skip, dtype=np.int64), assume_unique=False)
            starts, lengths = self.starts[alive].copy(), self.lengths[alive].copy()
            versions = self.versions[alive].copy()
            ids = list(self.slot_id)
            view = self.buf.view()
            watermark = self.watermark.text() if self.watermark else ""
        if alive.size:
            scores = self.backend.score(query, view, starts, lengths)
            order, top = cpu.topk(scores, k)
        else:
            order, top = np.zeros(0, np.int64), np.zeros(0, np.float32)
        return {"ids": [ids[int(alive[o])] for o in order], "versions": versions[order],
                "scores": np.asarray(top, dtype=np.float32), "watermark": watermark,
                "exhausted": int(alive.size) <= k, "dirty": dirty, "rows": int(alive.size)}


def _host_tokens(view: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A buffer view's tokens on the host as held: (fp16, None) or (int8 codes, scales)."""
    if isinstance(view, np.ndarray):
        return view, None
    if isinstance(view, tuple):
        return view
    from pgmaxsim.kernels import cupy_maxsim as gpu

    cp = gpu.cupy()
    t = cp.asnumpy(view.tokens)[:, : view.dim]
    return t, (None if view.scales is None else cp.asnumpy(view.scales))
