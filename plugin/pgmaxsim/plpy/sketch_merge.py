"""Merging rows into an index's residual sketch lists, inside the backend (``maxsim._sk_merge``;
sql/idempotent/034_sketch.sql, pgmaxsim.sketch).

A merge adds every row that has codes under generation ``gen`` and whose version is not merged
into that slot yet, as one new segment (one list row per code present), and records the versions
it merged, in the caller's transaction: a search sees the segment whole or not at all. Past
:data:`MAX_SEGMENTS` segments the lists are rewritten as one, without the entries of rows updated
or deleted since; a rewrite of all of them goes into a table of its own, swapped in by the next
merge call (maxsim._sk_swap, sql/idempotent/034_sketch.sql), which frees the old entries' bytes.
At the end of a burst of writes, or when asked, the lists are settled into one segment the same way
(:func:`settles`). The first merge of a generation measures its codec (and clears what an older
generation left in the slot). Runs as the schema owner (called by SECURITY DEFINER functions).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pgmaxsim import firststage as fs
from pgmaxsim import sketch

#: Rows fetched per round while merging.
BATCH = 128
#: Segments per slot before a merge compacts them into one (a query reads every segment of a code).
MAX_SEGMENTS = 8
#: Entries held in memory before a segment is written (~20 bytes each while merging).
FLUSH_ENTRIES = 10_000_000
#: List rows per INSERT.
WRITE_ROWS = 4096
#: Rows (drawn at random) whose tokens a new codec's magnitudes are measured on.
CODEC_ROWS = 200
#: Seconds without a write after which fewer than :func:`threshold` pending rows are merged too.
QUIET_S = 30.0
#: A merge at the end of a burst of writes (no write for QUIET_S) settles the lists into one segment
#: once the segments besides the largest hold this share of it: one segment is the smallest form of
#: the lists (~97 bytes of heap tuple and key per list row, and TOAST pages shared by fewer values)
#: and the fastest to read (one list row per probed code), and an index written a few rows at a time
#: is not rewritten whole after every quiet spell (at most 1 / SETTLE_SHARE times the bytes written).
SETTLE_SHARE = 1 / 16


def threshold(merged_rows: int) -> int:
    """Rows written since the last merge that call for one (the worker's trainer merges then):
    5 % of the merged rows, at least 256 and at most 1,000 (a merge reads each pending row's tokens
    once, the size-tiered compaction keeps the rewrites amortized; a search scores every pending row
    exactly up to 1,000 of them, and ranks them by the codebook's probe score past that).

    >>> threshold(0), threshold(10_000), threshold(100_000)
    (256, 500, 1000)
    """
    return max(256, min(1000, merged_rows // 20))


def settles(sizes: dict[int, int], asked: bool) -> bool:
    """Whether a settle rewrites segments of these sketch bytes (``sizes``: segment -> bytes) as one:
    there are several, and it was ``asked`` for or the segments besides the largest hold
    :data:`SETTLE_SHARE` of it.

    >>> settles({0: 1600, 3: 100}, False), settles({0: 1600, 3: 99}, False), settles({0: 1600, 3: 99}, True)
    (True, False, True)
    >>> settles({0: 1600}, True)
    False
    """
    if len(sizes) < 2:
        return False
    base = max(sizes.values())
    return asked or sum(sizes.values()) - base >= SETTLE_SHARE * base


class _Lists:
    """The sketch tables of one index and slot, and the statements on them."""

    def __init__(self, plpy: Any, index: dict[str, Any], gen: int) -> None:
        self.plpy, self.index, self.gen, self.slot = plpy, index, int(gen), int(gen) % 2
        i = int(index["id"])
        self.sk, self.skrow, self.skm = f"maxsim.fs_sk_{i}", f"maxsim.fs_skrow_{i}", f"maxsim.fs_skm_{i}"
        self.tok = f"maxsim.{plpy.quote_ident(index['token_table'])}"
        self.codes = f"codes_{self.slot}"
        nxt = self.q("SELECT maxsim._sk_next($1, $2) AS t", ["int4", "int4"], [i, self.slot])[0]["t"]
        #: where a full compaction writes the lists, to be swapped in by the next merge (maxsim._sk_swap);
        #: None: the lists are a plain table (an index older than the partitions), compacted in place
        self.next = None if nxt is None else f"maxsim.{plpy.quote_ident(nxt)}"

    def q(self, text: str, types: list[str], args: list[Any]) -> Any:
        return self.plpy.execute(self.plpy.prepare(text, types), args)

    def clear(self) -> None:
        """Empty this slot's lists, which are not the live ones (the old slot's release after the last
        switch, maxsim._fs_release, has normally emptied them already)."""
        self.q("SELECT maxsim._sk_clear($1, $2)", ["int4", "int4"], [int(self.index["id"]), self.slot])

    def codec(self, cb: fs.Codebook) -> sketch.Codec:
        """The slot's codec for this generation, measured and stored when it has none."""
        row = self.q(f"SELECT gen, mag FROM {self.skm} WHERE slot = $1", ["int2"], [self.slot])
        if row and int(row[0]["gen"]) == self.gen:
            return sketch.Codec(np.asarray(row[0]["mag"], dtype=np.float32))
        self.clear()   # an older generation's lists in this slot
        xs = [self.stored(r["tokens"], r["n_tokens"]) for r in self.q(
            f"SELECT t.tokens, t.n_tokens FROM {self.tok} t WHERE t.{self.codes} IS NOT NULL"
            f" ORDER BY pg_catalog.random() LIMIT $1", ["int4"], [CODEC_ROWS])]
        x = np.concatenate(xs) if xs else np.zeros((0, int(self.index["dim"])), np.float32)
        codec = sketch.train(cb, x, fs.assign(cb, x))
        self.q(f"INSERT INTO {self.skm} (slot, gen, mag) VALUES ($1, $2, $3)", ["int2", "int4", "float4[]"],
               [self.slot, self.gen, codec.mag.tolist()])
        return codec

    def stored(self, blob: bytes, n: int) -> np.ndarray:
        from pgmaxsim import fs_train

        return fs_train.stored_tokens(blob, int(n), int(self.index["dim"]),
                                      self.index["options"].get("storage", "fp16"))

    def pending_plan(self) -> Any:
        return self.plpy.prepare(
            f"SELECT t.version, t.tokens, t.n_tokens FROM {self.tok} t WHERE t.{self.codes} IS NOT NULL"
            f" AND NOT EXISTS (SELECT 1 FROM {self.skrow} s WHERE s.slot = $1 AND s.version = t.version)", ["int2"])

    def write(self, ent: sketch.Entries, versions: list[int], table: str | None = None) -> None:
        """One new segment of ``ent`` and the versions it merges (into ``table``: the lists' table,
        or the rewrite waiting for its swap, :meth:`aside`)."""
        table = table or self.sk
        seg = self.q(f"SELECT coalesce(max(seg), -1) + 1 AS s FROM {table} WHERE slot = $1", ["int2"], [self.slot])[0]["s"]
        order = np.lexsort((ent.version, ent.code))
        code, ver, sk = ent.code[order], ent.version[order], ent.sk[order]
        cuts = np.flatnonzero(np.diff(code)) + 1
        starts, ends = np.concatenate([[0], cuts]), np.concatenate([cuts, [len(code)]])
        plan = self.plpy.prepare(
            f"INSERT INTO {table} (slot, code, seg, base, offs, sk)"
            f" SELECT $1, u.c, $2, u.b, u.o, u.s FROM ROWS FROM (pg_catalog.unnest($3), pg_catalog.unnest($4),"
            f" pg_catalog.unnest($5), pg_catalog.unnest($6)) AS u(c, b, o, s)",
            ["int2", "int4", "int4[]", "int8[]", "bytea[]", "bytea[]"])
        for a in range(0, len(starts), WRITE_ROWS):
            cs, bs, os_, ss = [], [], [], []
            for s, e in zip(starts[a:a + WRITE_ROWS], ends[a:a + WRITE_ROWS]):
                base, offs = sketch.pack_versions(ver[s:e])
                cs.append(int(code[s]))
                bs.append(base)
                os_.append(offs)
                ss.append(sk[s:e].tobytes())
            self.plpy.execute(plan, [self.slot, int(seg), cs, bs, os_, ss])
        if versions:
            self.q(f"INSERT INTO {self.skrow} (slot, version) SELECT $1, u.v FROM pg_catalog.unnest($2) AS u(v)"
                   f" ON CONFLICT DO NOTHING", ["int2", "int8[]"], [self.slot, versions])

    def sizes(self) -> dict[int, int]:
        """Sketch bytes per segment of the slot."""
        return {int(r["seg"]): int(r["b"]) for r in self.q(
            f"SELECT seg, sum(pg_catalog.length(sk)) AS b FROM {self.sk} WHERE slot = $1 GROUP BY seg", ["int2"], [self.slot])}

    def compact(self, nbytes: int, in_place: bool = False, all_segments: bool = False) -> str:
        """Rewrite segments as one, without entries of rows no longer live (size-tiered, as an LSM
        tree: a query reads every segment of a code, a rewrite costs what it reads). The segments
        besides the largest are rewritten together while they hold less than it; once they hold as
        much, all of them are (and the merged versions of rows gone since are forgotten). So a merge
        every ~1,000 rows does not rewrite the whole lists every 8 merges; ``all_segments``: all of
        them now (a settle, :func:`settles`). Returns "recent", "all" (rewritten in place:
        ``in_place``, or lists in a plain table) or "aside" (all, into the table the next merge swaps in)."""
        sizes = self.sizes()
        base = max(sizes, key=lambda k: sizes[k])
        rest = [k for k in sizes if k != base]
        full = all_segments or sum(sizes[k] for k in rest) >= sizes[base]
        segs = sorted(sizes) if full else rest
        live = np.array([int(r["version"]) for r in self.q(f"SELECT version FROM {self.tok}", [], [])], dtype=np.int64)
        parts = []
        for r in self.q(f"SELECT code, base, offs, sk FROM {self.sk} WHERE slot = $1 AND seg = ANY ($2)",
                        ["int2", "int4[]"], [self.slot, segs]):
            n = len(r["sk"]) // nbytes
            parts.append(sketch.Entries(np.full(n, int(r["code"]), np.int64),
                                        sketch.unpack_versions(int(r["base"]), r["offs"], n),
                                        np.frombuffer(r["sk"], np.uint8).reshape(n, nbytes)))
        ent = sketch.Entries.concat(parts, nbytes)
        keep = np.isin(ent.version, live)
        ent = sketch.Entries(ent.code[keep], ent.version[keep], ent.sk[keep])
        if full:
            self.q(f"DELETE FROM {self.skrow} s WHERE s.slot = $1 AND NOT EXISTS"
                   f" (SELECT 1 FROM {self.tok} t WHERE t.version = s.version)", ["int2"], [self.slot])
            if self.next is not None and not in_place:
                self.aside(ent)
                return "aside"
        self.q(f"DELETE FROM {self.sk} WHERE slot = $1 AND seg = ANY ($2)", ["int2", "int4[]"], [self.slot, segs])
        if len(ent.code):
            self.write(ent, [])
        return "all" if full else "recent"

    def aside(self, ent: sketch.Entries) -> None:
        """Write ``ent`` (the slot's live entries) as the whole lists into a table of their own
        (:attr:`next`), for the next merge to swap in (maxsim._sk_swap: a rewrite in place would
        leave the old entries' pages in the file, ~2x the live bytes). Meanwhile searches read the
        lists as they were, and each merge adds its segment to both (:func:`merge`)."""
        self.plpy.execute(f"DROP TABLE IF EXISTS {self.next}")
        self.plpy.execute(f"CREATE TABLE {self.next} (LIKE {self.sk} INCLUDING DEFAULTS INCLUDING STORAGE,"
                          f" CHECK (slot = {int(self.slot)}))")   # the CHECK spares the swap's ATTACH a scan
        if len(ent.code):
            self.write(ent, [], table=self.next)
        self.plpy.execute(f"ALTER TABLE {self.next} ADD PRIMARY KEY (slot, code, seg)")

    def pending_rewrite(self) -> bool:
        """Whether a full compaction's rewrite waits for its swap (:meth:`aside`)."""
        return self.next is not None and bool(self.q("SELECT pg_catalog.to_regclass($1) IS NOT NULL AS e",
                                                     ["text"], [self.next])[0]["e"])

    def due(self) -> str | None:
        """Whether a merge is due: "many" when :func:`threshold` rows are newer than the newest
        merged version, "quiet" when some are and none was written in the last :data:`QUIET_S`
        seconds (a burst of writes has ended: its tail is merged rather than kept as candidates of
        every search), else None. A cheap lower bound: one bounded scan of the version index,
        whatever the size of the index."""
        est = self.q("SELECT coalesce(sum(greatest(c.reltuples, pg_catalog.pg_stat_get_live_tuples(c.oid), 0)), 0)::bigint AS n"
                     " FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass($1)) p"
                     " JOIN pg_catalog.pg_class c ON c.oid = p.relid WHERE p.isleaf", ["text"], [self.skrow])
        bar = threshold(int(est[0]["n"]) if est else 0)
        top = self.q(f"SELECT max(version) AS v FROM {self.skrow} WHERE slot = $1", ["int2"], [self.slot])[0]["v"]
        got = self.q(f"SELECT count(*) AS n, coalesce(max(s.updated_at) < pg_catalog.now() - pg_catalog.make_interval(secs => $3),"
                     f" false) AS quiet FROM (SELECT t.updated_at FROM {self.tok} t WHERE t.version > $1"
                     f" ORDER BY t.version LIMIT $2) s",
                     ["int8", "int4", "float8"], [-1 if top is None else int(top), bar, QUIET_S])[0]
        if int(got["n"]) >= bar:
            return "many"
        return "quiet" if int(got["n"]) > 0 and bool(got["quiet"]) else None


def merge(plpy: Any, index_id: int, gen: int, only_if_due: bool, settle: bool = False) -> dict[str, Any]:
    """Merge the pending rows of generation ``gen`` (see the module docstring); ``only_if_due``:
    only when a merge is due (:meth:`_Lists.due`). Then the lists are *settled*, rewritten as one
    segment (:func:`settles`), when ``settle`` asks for it (``pgmaxsim worker --once``, after bulk
    loads) or the merge took the tail of a burst of writes (due as "quiet"), unless that rewrite
    would be in place (transactions held on, or lists older than their partitions: it would leave
    the old pages in the file). The caller (maxsim._sk_merge) holds the index's merge lock
    (another merge of the index running, it answers busy without calling this)."""
    from pgmaxsim.plpy import codes as codes_mod
    from pgmaxsim.plpy.api import index_by_id

    out: dict[str, Any] = {"rows": 0, "entries": 0, "compacted": False}
    index = index_by_id(plpy, index_id)
    cb = codes_mod._codebook(plpy, int(index_id), int(gen))
    if cb is None:
        return out
    lists = _Lists(plpy, index, gen)
    why = None
    if only_if_due and lists.q(f"SELECT 1 FROM {lists.skm} WHERE slot = $1 AND gen = $2", ["int2", "int4"],
                               [lists.slot, int(gen)]):
        why = lists.due()
        if why is None:
            return out
    codec = lists.codec(cb)
    nbytes = codec.bits // 8
    # a full compaction's rewrite waiting for its swap gets this merge's segments too, so that it
    # stays the whole lists (and the lists are not compacted meanwhile)
    rewrite = lists.pending_rewrite()
    parts: list[sketch.Entries] = []
    versions: list[int] = []
    held = 0

    def flush() -> None:
        ent = sketch.Entries.concat(parts, nbytes)
        lists.write(ent, versions)
        if rewrite:
            lists.write(ent, [], table=lists.next)
        out["rows"] += len(versions)
        out["entries"] += held

    cur = plpy.cursor(lists.pending_plan(), [lists.slot])
    while True:
        rows = cur.fetch(BATCH)
        if not rows:
            break
        for r in rows:
            x = lists.stored(r["tokens"], r["n_tokens"])
            c = fs.assign(cb, x)
            parts.append(sketch.Entries(c.astype(np.int64), np.full(len(x), int(r["version"]), np.int64),
                                        sketch.encode(cb, codec, x, c)))
            versions.append(int(r["version"]))
            held += len(x)
        if held >= FLUSH_ENTRIES:
            flush()
            parts, versions, held = [], [], 0
    if versions:
        flush()
    if rewrite:
        out["swap"] = "pending"
        return out
    in_place = bool(plpy.execute("SELECT pg_catalog.current_setting('pgmaxsim.sketch_in_place', true) = 'on' AS on")[0]["on"])
    sizes = lists.sizes()
    # (lists in a plain table, an index older than the partitions, could only be rewritten in place)
    settling = (settle or why == "quiet") and not in_place and lists.next is not None and settles(sizes, settle)
    if settling or len(sizes) > MAX_SEGMENTS:
        out["compacted"] = lists.compact(nbytes, in_place, all_segments=settling)
        out["settled"] = settling
        if out["compacted"] == "aside":
            out["swap"] = "pending"
    return out

