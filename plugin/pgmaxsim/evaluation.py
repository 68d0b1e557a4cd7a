"""Retrieval quality on labelled queries, and how far a search setting is from exact MaxSim.

What ``pgmaxsim eval`` runs; the command only parses arguments and prints.

- Readers: :func:`read_beir_queries` (``queries.jsonl``: ``_id``, ``text``),
  :func:`read_qrels` (TSV ``query-id corpus-id score``, header optional; the
  4-column TREC form ``qid 0 docid rel`` too), :func:`read_vidore` (one
  JSONL/Parquet file with a query, a page id and a score column),
  :func:`read_texts` (one query per line, for ``--no-qrels``),
  :func:`read_tokens` (precomputed query token arrays from a ``.npz``).
  Every malformed line is a :class:`~pgmaxsim.errors.PgmaxsimError` naming the
  file and line number.
- :func:`run_settings`: each query through the real ``maxsim.search`` SQL
  function for each ``candidates`` setting, the index's default and exact
  search (``candidates`` >= the index's rows), timing each call from the client.
- :func:`quality`: NDCG@5/@10, recall@5/@10/@100 and MRR@10 computed by
  ``pytrec_eval`` (trec_eval's own code): gains are the graded judgements,
  relevant means a judgement >= 1, ties in score are broken as trec_eval does.
  MRR@10 is trec_eval's ``recip_rank`` on the run cut to its first 10 rows. A
  judged query for which a setting returned nothing counts as 0 (trec_eval
  would leave it out of the mean).
- :func:`fidelity`: pgmaxsim's own measures of an approximate search against
  exact MaxSim over the whole index (defined there); bench/search.py uses it too.
- :func:`plot`: quality and fidelity against p50 latency (matplotlib).

Metrics need the ``eval`` extra (``pip install 'pgmaxsim[eval]'``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from pgmaxsim.errors import PgmaxsimError

EXTRA = "pip install 'pgmaxsim[eval]'"
FIDELITY_K = 10
# Metric name shown -> (pytrec_eval measure, cutoff that the run must reach).
METRICS: dict[str, tuple[str, int]] = {
    "ndcg@5": ("ndcg_cut_5", 5),
    "ndcg@10": ("ndcg_cut_10", 10),
    "recall@5": ("recall_5", 5),
    "recall@10": ("recall_10", 10),
    "recall@100": ("recall_100", 100),
    "mrr@10": ("recip_rank", 10),
}
EXACT = "exact"
DEFAULT = "default"

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def bundled_dir() -> Path:
    """The labelled set written for the quickstart corpus (queries.jsonl, qrels.tsv, pages.tsv)."""
    return Path(__file__).resolve().parent / "data" / "eval"


# ---------------------------------------------------------------- readers

def _open_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise PgmaxsimError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise PgmaxsimError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _json_rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSONL file."""
    for no, line in enumerate(_open_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PgmaxsimError(f"{path}:{no}: not a JSON object ({e.msg})") from None
        if not isinstance(obj, dict):
            raise PgmaxsimError(f"{path}:{no}: not a JSON object")
        yield no, obj


def _text_field(path: Path, no: int, obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise PgmaxsimError(f"{path}:{no}: missing or empty {name!r}")
    if isinstance(value, float) or not isinstance(value, (str, int)):
        raise PgmaxsimError(f"{path}:{no}: {name!r} must be a string, got {value!r}")
    return str(value)


def _add_query(queries: dict[str, str], path: Path, no: int, qid: str, text: str) -> None:
    if queries.get(qid, text) != text:
        raise PgmaxsimError(f"{path}:{no}: query id {qid!r} appears twice with different texts")
    queries[qid] = text


def read_beir_queries(path: str | Path) -> dict[str, str]:
    """BEIR ``queries.jsonl``: ``{"_id": ..., "text": ...}`` per line -> ``{id: text}`` in file order."""
    p = Path(path)
    queries: dict[str, str] = {}
    for no, obj in _json_rows(p):
        _add_query(queries, p, no, _text_field(p, no, obj, "_id"), _text_field(p, no, obj, "text"))
    if not queries:
        raise PgmaxsimError(f"{p}: no queries")
    return queries


def _grade(path: Path, no: int, raw: Any) -> int:
    try:
        grade = float(raw)
    except (TypeError, ValueError):
        raise PgmaxsimError(f"{path}:{no}: the score {raw!r} is not a number") from None
    if not grade.is_integer():
        raise PgmaxsimError(f"{path}:{no}: the score {raw!r} is not a whole number (graded relevance: 0, 1, 2, ...)")
    return int(grade)


def _add_judgement(qrels: Qrels, path: Path, no: int, qid: str, doc: str, grade: int) -> None:
    seen = qrels.setdefault(qid, {})
    if seen.get(doc, grade) != grade:
        raise PgmaxsimError(f"{path}:{no}: query {qid!r} judges {doc!r} twice with different scores")
    seen[doc] = grade


def read_qrels(path: str | Path) -> Qrels:
    """Qrels TSV ``query-id corpus-id score`` (tabs or spaces; BEIR's header line is optional) or
    TREC's ``query-id 0 corpus-id score`` -> ``{query id: {corpus id: grade}}``."""
    p = Path(path)
    qrels: Qrels = {}
    for no, line in enumerate(_open_lines(p), start=1):
        parts = line.split()
        if not parts:
            continue
        if no == 1 and len(parts) in (3, 4) and not _is_number(parts[-1]):
            continue  # a header (BEIR writes "query-id corpus-id score")
        if len(parts) == 3:
            qid, doc, raw = parts
        elif len(parts) == 4:
            qid, _, doc, raw = parts
        else:
            raise PgmaxsimError(f"{p}:{no}: expected 'query-id corpus-id score', got {len(parts)} fields")
        _add_judgement(qrels, p, no, qid, doc, _grade(p, no, raw))
    if not qrels:
        raise PgmaxsimError(f"{p}: no judgements")
    return qrels


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


QUERY_COLUMNS = ("query",)
QUERY_ID_COLUMNS = ("query-id", "query_id", "qid")
PAGE_COLUMNS = ("corpus-id", "corpus_id", "page_id", "doc_id", "docid", "id")
SCORE_COLUMNS = ("score", "relevance", "label")


def _pick(columns: Iterable[str], wanted: Sequence[str], given: str | None, path: Path, what: str,
          required: bool = True) -> str | None:
    cols = list(columns)
    if given is not None:
        if given not in cols:
            raise PgmaxsimError(f"{path}: no column {given!r} (columns: {', '.join(cols)})")
        return given
    for name in wanted:
        if name in cols:
            return name
    if required:
        raise PgmaxsimError(f"{path}: no {what} column (looked for {', '.join(wanted)}; columns:"
                            f" {', '.join(cols)}; name it with --{what}-column)")
    return None


def _parquet_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PgmaxsimError(f"{path}: reading Parquet needs pyarrow (pip install 'pgmaxsim[parquet]'"
                            " or pip install pyarrow); or convert the file to JSONL") from None
    if not path.is_file():
        raise PgmaxsimError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise PgmaxsimError(f"{path}: not a readable Parquet file ({e})") from None
    return [(i, row) for i, row in enumerate(table.to_pylist(), start=1)]


def read_vidore(path: str | Path, *, query_column: str | None = None, page_column: str | None = None,
                score_column: str | None = None) -> tuple[dict[str, str], Qrels]:
    """ViDoRe-style judgements: one row per (query, page) with a query text, a page id and a
    score column (JSONL, or Parquet when pyarrow is installed). Queries are identified by a
    query-id column when there is one, else by their text. Rows without a score column count as
    relevance 1. Line numbers (Parquet: row numbers) name bad rows."""
    p = Path(path)
    rows = _parquet_rows(p) if p.suffix.lower() == ".parquet" else list(_json_rows(p))
    if not rows:
        raise PgmaxsimError(f"{p}: no rows")
    columns = rows[0][1].keys()
    qcol = _pick(columns, QUERY_COLUMNS, query_column, p, "query")
    pcol = _pick(columns, PAGE_COLUMNS, page_column, p, "page")
    scol = _pick(columns, SCORE_COLUMNS, score_column, p, "score", required=False)
    idcol = _pick(columns, QUERY_ID_COLUMNS, None, p, "query-id", required=False)
    queries: dict[str, str] = {}
    qrels: Qrels = {}
    for no, row in rows:
        text = _text_field(p, no, row, qcol or "query")
        qid = _text_field(p, no, row, idcol) if idcol else text
        _add_query(queries, p, no, qid, text)
        doc = _text_field(p, no, row, pcol or "corpus-id")
        grade = _grade(p, no, row.get(scol)) if scol else 1
        _add_judgement(qrels, p, no, qid, doc, grade)
    return queries, qrels


def read_texts(path: str | Path) -> dict[str, str]:
    """One query per non-blank line (``--no-qrels``); a ``.jsonl`` file is read as BEIR queries.
    Ids are the line numbers."""
    p = Path(path)
    if p.suffix.lower() == ".jsonl":
        return read_beir_queries(p)
    queries = {str(no): line.strip() for no, line in enumerate(_open_lines(p), start=1) if line.strip()}
    if not queries:
        raise PgmaxsimError(f"{p}: no queries")
    return queries


def read_tokens(path: str | Path) -> dict[str, np.ndarray]:
    """Precomputed query tokens: a ``.npz`` holding one ``(n_tokens, dim)`` array per query id."""
    p = Path(path)
    if not p.is_file():
        raise PgmaxsimError(f"{p}: no such file")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except Exception as e:  # noqa: BLE001 - zipfile, ValueError, OSError: not an npz
        raise PgmaxsimError(f"{p}: not a readable .npz file ({e})") from None
    for qid, a in arrays.items():
        if a.ndim != 2 or a.shape[0] == 0:
            raise PgmaxsimError(f"{p}: array {qid!r} has shape {a.shape}, expected (n_tokens, dim)")
    if not arrays:
        raise PgmaxsimError(f"{p}: no arrays")
    return arrays


def check_labels(queries: Mapping[str, str], qrels: Qrels) -> None:
    """Every query judged, every judged query asked: else one line naming the first ids."""
    unjudged = [q for q in queries if q not in qrels]
    if unjudged:
        raise PgmaxsimError(f"{len(unjudged)} of {len(queries)} queries have no judgements in the qrels"
                            f" (first: {_first(unjudged)}); judge them or remove them, or use --no-qrels")
    orphans = [q for q in qrels if q not in queries]
    if orphans:
        raise PgmaxsimError(f"the qrels judge {len(orphans)} query ids that are not in the queries file"
                            f" (first: {_first(orphans)})")


def _first(ids: Sequence[Any], n: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (", …" if len(ids) > n else "")


# ---------------------------------------------------------------- runs

@dataclass
class Setting:
    """One way of searching: ``candidates`` for maxsim.search (None: the index's default)."""

    label: str
    candidates: int | None
    effective: int = 0  # what maxsim.search uses (the default's value); orders the plot's points


@dataclass
class SettingResult:
    setting: Setting
    run: Run                                   # query id -> {corpus id: score}
    ranked: dict[str, list[tuple[str, float]]]  # query id -> (corpus id, score), best first
    latency_ms: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latency_ms, 50)) if self.latency_ms else math.nan

    @property
    def p95(self) -> float:
        return float(np.percentile(self.latency_ms, 95)) if self.latency_ms else math.nan


def settings_for(candidates: Sequence[int], rows: int, default: int, k: int = 1) -> list[Setting]:
    """The index's default, each ``candidates`` value below the row count (at or above it a
    search is exact), and exact search. maxsim.search raises candidates to ``k``, so a value
    below ``k`` is listed as ``k``; settings that search alike are listed once."""
    eff_default = min(max(default, k), rows)
    out = [Setting(f"{DEFAULT} ({eff_default})" if eff_default < rows else f"{DEFAULT} (= exact)", None,
                   eff_default)]
    seen = {eff_default}
    for c in sorted({max(c, k) for c in candidates}):
        if c < rows and c not in seen:
            out.append(Setting(str(c), c, c))
            seen.add(c)
    out.append(Setting(EXACT, max(rows, 1), rows))
    return out


def check_ids(conn: Any, info: Any, ids: Iterable[str]) -> None:
    """Every judged corpus id is a row of the index (embedded): else one line naming the first."""
    from psycopg import sql

    wanted = sorted(set(ids))
    found = {r[0] for r in conn.execute(
        sql.SQL("SELECT id::text FROM {} WHERE id::text = ANY(%s)").format(info.token_ident()), (wanted,))}
    missing = [i for i in wanted if i not in found]
    if missing:
        raise PgmaxsimError(f"{len(missing)} of {len(wanted)} judged corpus ids are not rows of index"
                            f" {info.name!r} (first: {_first(missing)}); corpus ids are the source table's"
                            f" {info.id_column} values of embedded rows")


def run_settings(conn: Any, info: Any, tokens: Mapping[str, np.ndarray], settings: Sequence[Setting], k: int,
                 tick: Callable[[], None] = lambda: None) -> list[SettingResult]:
    """Each query's tokens through ``maxsim.search(name, tokens, k, candidates)`` for each setting,
    timed from the client (send, score, fetch); ``tick`` after each call (a progress bar).

    One untimed search first (caches, plan), then the settings take turns query by query, so
    that a server growing busier or warmer during the run does not favour one setting."""
    import psycopg

    from pgmaxsim.errors import one_line

    stmt = "SELECT id::text, score FROM maxsim.search(%s, %s, %s, %s)"
    results = [SettingResult(s, {}, {}) for s in settings]
    try:
        _search_all(conn, info, tokens, results, k, stmt, tick)
    except psycopg.Error as e:  # nothing is reported from a run that stopped half way
        raise PgmaxsimError(f"maxsim.search failed: {one_line(e)}") from None
    return results


def _search_all(conn: Any, info: Any, tokens: Mapping[str, np.ndarray], results: list[SettingResult], k: int,
                stmt: str, tick: Callable[[], None]) -> None:
    from pgmaxsim.db.adapters import Tokens
    from pgmaxsim.search import _cursor

    with _cursor(conn, info) as cur:
        first = next(iter(tokens.values()))
        cur.execute(stmt, (info.name, Tokens(first), k, results[-1].setting.candidates))
        cur.fetchall()
        for qid, q in tokens.items():
            for res in results:
                t = time.perf_counter()
                cur.execute(stmt, (info.name, Tokens(q), k, res.setting.candidates))
                rows = [(str(i), float(sc)) for i, sc in cur.fetchall()]
                res.latency_ms.append((time.perf_counter() - t) * 1000)
                res.ranked[qid] = rows
                res.run[qid] = dict(rows)
                tick()


# ---------------------------------------------------------------- measures

def _pytrec_eval() -> Any:
    try:
        import pytrec_eval
    except ImportError:
        raise PgmaxsimError(f"the quality metrics need pytrec_eval ({EXTRA})") from None
    return pytrec_eval


def quality(qrels: Qrels, run: Run, k: int) -> dict[str, float | None]:
    """Mean NDCG@5/@10, recall@5/@10/@100, MRR@10 over every judged query (see module doc).
    A metric whose cutoff is beyond ``k`` (the rows each search returned) is None."""
    pytrec_eval = _pytrec_eval()
    wanted = {m: meas for m, (meas, cut) in METRICS.items() if cut <= k}
    out: dict[str, float | None] = {m: None for m in METRICS}
    if not qrels:
        return out
    base = {meas for meas in wanted.values() if meas != "recip_rank"}
    per_query: dict[str, dict[str, float]] = {}
    if base:
        per_query = pytrec_eval.RelevanceEvaluator(qrels, base).evaluate(run)
    rr: dict[str, dict[str, float]] = {}
    if "mrr@10" in wanted:
        cut = {q: dict(_top(docs, 10)) for q, docs in run.items()}
        rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    for m, meas in wanted.items():
        source = rr if meas == "recip_rank" else per_query
        out[m] = sum(source.get(q, {}).get(meas, 0.0) for q in qrels) / len(qrels)
    return out


def _top(docs: Mapping[str, float], n: int) -> list[tuple[str, float]]:
    """The first ``n`` rows in trec_eval's order (score descending, then corpus id descending)."""
    return sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:n]


@dataclass
class Fidelity:
    top1: float       # share of queries whose first result is exact MaxSim's first
    recall: float     # mean share of exact's top-k found in the top-k
    mass: float       # mean (sum of the top-k's exact scores) / (sum of exact's top-k scores)


def fidelity(found: Sequence[Sequence[tuple[Any, float]]], exact: Sequence[Sequence[tuple[Any, float]]],
             k: int = FIDELITY_K) -> Fidelity:
    """How close an approximate search is to exact MaxSim over the whole index, per query then averaged.

    ``found[i]``: query i's results best first as ``(id, exact MaxSim score)`` (maxsim.search
    rescores its candidates exactly, so its scores are exact); ``exact[i]``: exact search's results.

    - top-1 agreement: the first result is exact's first, or scores the same (a tie);
    - recall@k vs exact: |top-k ∩ exact top-k| / min(k, rows exact returned);
    - score-mass@k: sum of the top-k's scores / sum of exact top-k's scores. Unlike recall it
      does not punish swapping a row for one that scores the same, and it says how much of
      the best attainable MaxSim a setting keeps (1.0 for exact, below 1.0 when better rows
      were missed; meaningful for positive scores, as MaxSim of normalised tokens is).
    """
    if len(found) != len(exact):
        raise ValueError("found and exact must hold the same queries")
    if not found:
        return Fidelity(math.nan, math.nan, math.nan)
    top1 = recall = mass = 0.0
    for got, ref in zip(found, exact):
        got, ref = list(got)[:k], list(ref)[:k]
        if not ref:
            top1 += not got
            recall += 1.0
            mass += 1.0
            continue
        top1 += bool(got) and (got[0][0] == ref[0][0] or math.isclose(got[0][1], ref[0][1], rel_tol=1e-6))
        recall += len({i for i, _ in got} & {i for i, _ in ref}) / len(ref)
        denom = sum(s for _, s in ref)
        mass += sum(s for _, s in got) / denom if denom else 1.0
    n = len(found)
    return Fidelity(top1 / n, recall / n, mass / n)


# ---------------------------------------------------------------- report

@dataclass
class Row:
    """One setting's figures (a line of the table, an object of the JSON)."""

    setting: str
    candidates: int | None
    effective: int
    metrics: dict[str, float | None]
    fidelity: Fidelity
    p50_ms: float
    p95_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "candidates": self.candidates, "effective_candidates": self.effective,
                **self.metrics,
                "top1_agreement": self.fidelity.top1, "recall@10_vs_exact": self.fidelity.recall,
                "score_mass@10": self.fidelity.mass, "latency_p50_ms": self.p50_ms,
                "latency_p95_ms": self.p95_ms}


def report(results: Sequence[SettingResult], qrels: Qrels | None, k: int) -> list[Row]:
    """Rows per setting; the exact setting (last) is the fidelity reference."""
    exact = next(r for r in results if r.setting.label == EXACT)
    qids = list(exact.ranked)
    ref = [exact.ranked[q] for q in qids]
    rows = []
    for r in results:
        metrics = quality(qrels, r.run, k) if qrels is not None else {m: None for m in METRICS}
        fid = fidelity([r.ranked[q] for q in qids], ref, min(FIDELITY_K, k))
        rows.append(Row(r.setting.label, r.setting.candidates, r.setting.effective, metrics, fid, r.p50, r.p95))
    return rows


def log_latency_axis(p50s: Sequence[float]) -> bool:
    """Whether the plot's latency axis is logarithmic: when the slowest setting (on a large index,
    exact search) takes more than 10x the fastest, a linear axis would crowd every other setting
    into its left edge and hide the knee."""
    shown = [v for v in p50s if v > 0 and not math.isnan(v)]
    return bool(shown) and max(shown) > 10 * min(shown)


def plot(rows: Sequence[Row], path: str | Path, title: str) -> None:
    """Quality (left) and fidelity (right) against p50 latency, one point per setting, so the knee
    (where more candidates stop buying quality) is visible. Points are joined in order of
    candidates (exact last), not of latency, which is noisy between close settings."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PgmaxsimError(f"--plot needs matplotlib ({EXTRA})") from None
    same = f"{DEFAULT} (= exact)"  # the same searches as exact: one point
    order = sorted((r for r in rows if r.setting != same),
                   key=lambda r: (r.setting == EXACT, r.effective, not r.setting.startswith(DEFAULT)))
    x = [r.p50_ms for r in order]
    fig, (ax_q, ax_f) = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    have_quality = any(r.metrics.get("ndcg@10") is not None for r in order)
    if have_quality:
        for name in ("ndcg@10", "recall@10", "mrr@10"):
            ax_q.plot(x, [r.metrics[name] for r in order], marker="o", label=name)
        ax_q.set_title("quality on the judged queries")
        ax_q.legend(loc="lower right")
    else:
        ax_q.text(0.5, 0.5, "no judgements (--no-qrels)", ha="center", va="center", transform=ax_q.transAxes)
        ax_q.set_title("quality")
    for name, values in (("top-1 agreement", [r.fidelity.top1 for r in order]),
                         ("recall@10 vs exact", [r.fidelity.recall for r in order]),
                         ("score-mass@10", [r.fidelity.mass for r in order])):
        ax_f.plot(x, values, marker="o", label=name)
    ax_f.set_title("fidelity to exact MaxSim")
    ax_f.legend(loc="lower right")
    shown = [v for r in order for v in (r.fidelity.top1, r.fidelity.recall, r.fidelity.mass,
                                        *(r.metrics.get(m) for m in ("ndcg@10", "recall@10", "mrr@10")))
             if v is not None and not math.isnan(v)]
    low = max(0.0, math.floor((min(shown, default=0.0) - 0.05) * 10) / 10)  # zoom in so the knee shows
    log_x = log_latency_axis(x)
    for ax in (ax_q, ax_f):
        ax.set_xlabel("latency p50 (ms, client-side" + (", log scale)" if log_x else ")"))
        if log_x:
            ax.set_xscale("log")
        ax.set_ylim(low - 0.01, 1.01)
        ax.grid(alpha=0.3)
        for r in order:
            y = r.fidelity.recall if ax is ax_f else (r.metrics.get("ndcg@10") if have_quality else None)
            if y is not None:
                ax.annotate(r.setting.split(" ")[0] if r.setting.startswith(DEFAULT) else r.setting,
                            (r.p50_ms, y), textcoords="offset points", xytext=(4, -12), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- one evaluation

@dataclass
class Evaluation:
    index: str
    rows_in_index: int
    queries: int
    k: int
    judged: bool
    rows: list[Row]

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "rows_in_index": self.rows_in_index, "queries": self.queries, "k": self.k,
                "judged": self.judged, "settings": [r.as_dict() for r in self.rows]}


def encode_all(info: Any, queries: Mapping[str, str], tokens: Mapping[str, np.ndarray] | None,
               tick: Callable[[], None] = lambda: None) -> dict[str, np.ndarray]:
    """Each query's tokens, encoded once with the index's model through pgmaxsim's query path
    (:func:`pgmaxsim.search.encode_query`), or taken from ``tokens`` (checked the same way)."""
    from pgmaxsim.search import encode_query, encoder_for

    out: dict[str, np.ndarray] = {}
    if tokens is not None:
        missing = [q for q in queries if q not in tokens]
        if missing:
            raise PgmaxsimError(f"the token file has no array for {len(missing)} queries (first: {_first(missing)})")
        for qid in queries:
            try:
                out[qid] = encode_query(info, tokens[qid])
            except PgmaxsimError as e:
                raise PgmaxsimError(f"query {qid!r}: {e}") from None
        return out
    if not info.model:
        raise PgmaxsimError(f"index {info.name!r} has no model: give the queries' token arrays with --tokens FILE.npz")
    encoder = encoder_for(info.model, info.model_revision)
    for qid, text in queries.items():
        try:
            out[qid] = encode_query(info, text, encoder)
        except PgmaxsimError as e:
            raise PgmaxsimError(f"query {qid!r}: {e}") from None
        tick()
    return out


def evaluate(conn: Any, index: str, queries: Mapping[str, str], qrels: Qrels | None, *, k: int = 10,
             candidates: Sequence[int] = (16, 32, 64, 128, 256), tokens: Mapping[str, np.ndarray] | None = None,
             progress: Callable[[int, str], Any] | None = None) -> Evaluation:
    """Check the inputs against the index, encode the queries once, search them with each setting,
    measure. ``progress(total, desc)``: a context-managed bar with ``update()`` (tqdm)."""
    from pgmaxsim.registry import get_index

    if k < FIDELITY_K:
        raise PgmaxsimError(f"--k must be at least {FIDELITY_K} (the @10 metrics and fidelity), got {k}")
    if any(c <= 0 for c in candidates):
        raise PgmaxsimError(f"candidates must be positive, got {sorted(candidates)}")
    if not queries:
        raise PgmaxsimError("no queries")
    info = get_index(conn, index)
    if qrels is not None:
        check_labels(queries, qrels)
        check_ids(conn, info, (d for docs in qrels.values() for d in docs))
    rows = int(conn.execute("SELECT rows FROM maxsim.index_info(%s)", (index,)).fetchone()[0])
    if rows == 0:
        raise PgmaxsimError(f"index {index!r} has no embedded rows yet (run `pgmaxsim worker --once`)")
    default = info.candidates
    settings = settings_for(candidates, rows, default, k)
    bar = progress or _no_bar
    with bar(len(queries), "encoding queries") as b:
        toks = encode_all(info, queries, tokens, b.update)
    with bar(len(queries) * len(settings), "searching") as b:
        results = run_settings(conn, info, toks, settings, k, b.update)
    return Evaluation(index, rows, len(queries), k, qrels is not None, report(results, qrels, k))


class _NoBar:
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def _no_bar(total: int, desc: str) -> _NoBar:
    return _NoBar()


# ---------------------------------------------------------------- the bundled set

def bundled_set() -> tuple[dict[str, str], Qrels]:
    d = bundled_dir()
    return read_beir_queries(d / "queries.jsonl"), read_qrels(d / "qrels.tsv")


def check_demo_pages(conn: Any, table: str) -> bool:
    """Whether ``table`` holds the quickstart corpus with the ids the bundled qrels name
    (``pages.tsv``: corpus id, document, page); ingest assigns ids in file order."""
    from psycopg import sql

    from pgmaxsim.ingest import parse_table_name

    want = {}
    for line in _open_lines(bundled_dir() / "pages.tsv")[1:]:
        cid, doc, page = line.split("\t")
        want[cid] = (doc, int(page))
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
    if not exists:
        return False
    got = {str(i): (d, int(p)) for i, d, p in conn.execute(
        sql.SQL("SELECT id, document, page FROM {}").format(parse_table_name(table)))}
    return got == want
