"""pgmaxsim eval: metrics glue against trec_eval (pytrec_eval), fidelity, readers, and the bundled
set through a real server (one demo build)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import pytrec_eval
from pgmaxsim import evaluation as ev
from pgmaxsim.cli import main
from pgmaxsim.errors import PgmaxsimError

# ---------------------------------------------------------------- metrics against the library

# Hand-built: graded relevance (q1), ties in score (q2), judged-irrelevant and unjudged rows (q3),
# a query whose judgements are all 0 (q4), a relevant row the run misses (q5), an empty run (q6).
QRELS = {
    "q1": {"a": 2, "b": 1, "c": 0},
    "q2": {"x": 1, "y": 1},
    "q3": {"m": 1, "n": 0},
    "q4": {"p": 0, "r": 0},
    "q5": {"s": 3, "t": 1},
    "q6": {"u": 1},
}
RUN = {
    "q1": {"b": 3.0, "a": 2.0, "c": 1.0, "z": 0.5},
    "q2": {"w": 1.0, "x": 1.0, "y": 1.0, "v": 0.2},
    "q3": {"n": 5.0, "unjudged": 4.0, "m": 3.0},
    "q4": {"p": 2.0, "q": 1.0},
    "q5": {"t": 9.0, **{f"d{i}": 8.0 - i / 10 for i in range(12)}},
    "q6": {},
}


def _library(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """The same figures straight from pytrec_eval, every judged query counted (0 when absent)."""
    ev_all = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_5", "ndcg_cut_10", "recall_5", "recall_10",
                                                   "recall_100"}).evaluate(run)
    top10 = {q: dict(sorted(d.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10]) for q, d in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    names = {"ndcg@5": "ndcg_cut_5", "ndcg@10": "ndcg_cut_10", "recall@5": "recall_5", "recall@10": "recall_10",
             "recall@100": "recall_100"}
    out = {m: sum(ev_all.get(q, {}).get(meas, 0.0) for q in qrels) / len(qrels) for m, meas in names.items()}
    out["mrr@10"] = sum(rr.get(q, {}).get("recip_rank", 0.0) for q in qrels) / len(qrels)
    return out


def test_metrics_equal_trec_evals_on_hand_built_runs() -> None:
    got = ev.quality(QRELS, RUN, k=100)
    want = _library(QRELS, RUN)
    assert set(got) == set(want)
    for m in want:
        assert got[m] == pytest.approx(want[m], abs=1e-12), m


def test_metrics_hand_checked_values() -> None:
    # q1 alone: ranking b(1), a(2), c(0), z; trec_eval's NDCG uses linear gains.
    dcg = 1 / math.log2(2) + 2 / math.log2(3)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    one = ev.quality({"q1": QRELS["q1"]}, {"q1": RUN["q1"]}, k=10)
    assert one["ndcg@10"] == pytest.approx(dcg / idcg)
    assert one["mrr@10"] == pytest.approx(1.0)
    assert one["recall@5"] == pytest.approx(1.0)
    # q5: the relevant t is first but s (grade 3) is never found; MRR counts t.
    five = ev.quality({"q5": QRELS["q5"]}, {"q5": RUN["q5"]}, k=10)
    assert five["recall@10"] == pytest.approx(0.5)
    assert five["mrr@10"] == pytest.approx(1.0)
    # q4 (nothing relevant) scores 0, and q6 (empty run) still counts in the mean.
    both = ev.quality({"q4": QRELS["q4"], "q6": QRELS["q6"]}, {"q4": RUN["q4"], "q6": {}}, k=10)
    assert both["ndcg@10"] == 0.0 and both["recall@10"] == 0.0
    half = ev.quality({"q1": QRELS["q1"], "q6": QRELS["q6"]}, {"q1": RUN["q1"]}, k=10)
    assert half["recall@10"] == pytest.approx(0.5)


def test_mrr_at_10_ignores_rows_past_the_tenth() -> None:
    run = {"q": {f"d{i}": 100.0 - i for i in range(20)}}
    assert ev.quality({"q": {"d12": 1}}, run, k=20)["mrr@10"] == 0.0
    assert ev.quality({"q": {"d9": 1}}, run, k=20)["mrr@10"] == pytest.approx(0.1)


def test_cutoffs_beyond_k_are_not_reported() -> None:
    got = ev.quality(QRELS, RUN, k=10)
    assert got["recall@100"] is None and got["ndcg@10"] is not None


# ---------------------------------------------------------------- fidelity

def test_fidelity_measures() -> None:
    exact = [[("a", 10.0), ("b", 8.0), ("c", 6.0)], [("x", 5.0), ("y", 4.0)]]
    assert ev.fidelity(exact, exact, k=3) == ev.Fidelity(1.0, 1.0, 1.0)
    found = [[("b", 8.0), ("a", 10.0), ("d", 2.0)], [("x", 5.0), ("z", 1.0)]]
    f = ev.fidelity(found, exact, k=3)
    assert f.top1 == pytest.approx(0.5)
    assert f.recall == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert f.mass == pytest.approx((20 / 24 + 6 / 9) / 2)
    # a tie at the top (same score, other id) is agreement
    assert ev.fidelity([[("t", 10.0)]], [[("a", 10.0)]], k=1).top1 == 1.0


# ---------------------------------------------------------------- readers

def test_qrels_with_and_without_header_and_trec_form(tmp_path: Path) -> None:
    a = tmp_path / "a.tsv"
    a.write_text("query-id\tcorpus-id\tscore\nq1\t7\t2\nq1\t8\t0\n")
    b = tmp_path / "b.tsv"
    b.write_text("q1 7 2\n\nq1 8 0\n")
    c = tmp_path / "c.txt"
    c.write_text("q1 0 7 2\nq1 0 8 0\n")
    assert ev.read_qrels(a) == ev.read_qrels(b) == ev.read_qrels(c) == {"q1": {"7": 2, "8": 0}}


@pytest.mark.parametrize("text, message", [
    ("q1\t7\t2\nq1\t8\n", "b.tsv:2: expected 'query-id corpus-id score', got 2 fields"),
    ("q1\t7\t2\nq1\t8\thigh\n", "b.tsv:2: the score 'high' is not a number"),
    ("q1\t7\t2\nq2\t8\t1.5\n", "b.tsv:2: the score '1.5' is not a whole number"),
    ("q1\t7\t2\nq1\t7\t1\n", "b.tsv:2: query 'q1' judges '7' twice with different scores"),
])
def test_malformed_qrels_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "b.tsv"
    p.write_text(text)
    with pytest.raises(PgmaxsimError) as e:
        ev.read_qrels(p)
    assert message in str(e.value)


def test_queries_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "queries.jsonl"
    p.write_text('{"_id": "q1", "text": "bees"}\n{"_id": "q2", "text": "tides"\n')
    with pytest.raises(PgmaxsimError, match=r"queries.jsonl:2: not a JSON object"):
        ev.read_beir_queries(p)
    p.write_text('{"_id": "q1", "text": "bees"}\n\n{"_id": "q2"}\n')
    with pytest.raises(PgmaxsimError, match=r"queries.jsonl:3: missing or empty 'text'"):
        ev.read_beir_queries(p)
    with pytest.raises(PgmaxsimError, match="no such file"):
        ev.read_beir_queries(tmp_path / "missing.jsonl")


def test_vidore_jsonl_and_parquet(tmp_path: Path) -> None:
    p = tmp_path / "vidore.jsonl"
    p.write_text('{"query": "revenue by region", "corpus-id": 38, "score": 2}\n'
                 '{"query": "revenue by region", "corpus-id": 37, "score": 1}\n'
                 '{"query": "injuries", "corpus-id": 40, "score": 1}\n')
    queries, qrels = ev.read_vidore(p)
    assert queries == {"revenue by region": "revenue by region", "injuries": "injuries"}
    assert qrels == {"revenue by region": {"38": 2, "37": 1}, "injuries": {"40": 1}}
    p.write_text('{"query": "x", "page": 1}\n')
    with pytest.raises(PgmaxsimError, match="no page column .*--page-column"):
        ev.read_vidore(p)
    _, r = ev.read_vidore(p, page_column="page")
    assert r == {"x": {"1": 1}}  # no score column: relevant
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(PgmaxsimError, match=r"pyarrow .*pgmaxsim\[parquet\]"):
            ev.read_vidore(tmp_path / "v.parquet")


def test_labels_must_cover_each_other() -> None:
    with pytest.raises(PgmaxsimError, match=r"1 of 2 queries have no judgements .*'q2'"):
        ev.check_labels({"q1": "a", "q2": "b"}, {"q1": {"1": 1}})
    with pytest.raises(PgmaxsimError, match=r"judge 1 query ids that are not in the queries file .*'q9'"):
        ev.check_labels({"q1": "a"}, {"q1": {"1": 1}, "q9": {"1": 1}})


def test_bundled_set_is_consistent() -> None:
    queries, qrels = ev.bundled_set()
    ev.check_labels(queries, qrels)
    assert len(queries) >= 20
    assert all(any(g >= 1 for g in docs.values()) for docs in qrels.values())  # each has an answer
    assert any(g == 2 for docs in qrels.values() for g in docs.values())
    assert any(g == 1 for docs in qrels.values() for g in docs.values())


def test_settings_drop_exact_duplicates() -> None:
    labels = [s.label for s in ev.settings_for([16, 32, 64, 100, 500], rows=200, default=64, k=10)]
    assert labels == ["default (64)", "16", "32", "100", "exact"]
    assert [s.label for s in ev.settings_for([16], rows=10, default=100)] == ["default (= exact)", "exact"]
    # maxsim.search raises candidates to k: 4 and 8 search like 10, listed once as 10
    assert [s.label for s in ev.settings_for([4, 8, 10, 20], rows=50, default=30, k=10)] == \
        ["default (30)", "10", "20", "exact"]


def test_the_latency_axis_turns_logarithmic_when_exact_is_far_slower() -> None:
    assert not ev.log_latency_axis([13.5, 14.8, 20.5, 23.5])      # the quickstart: every setting alike
    assert ev.log_latency_axis([380.0, 920.0, 2070.0, 29500.0])   # 10,000 pages: exact 30 s
    assert not ev.log_latency_axis([math.nan, 0.0])


# ---------------------------------------------------------------- through a real server

def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _independent(dsn: str, candidates: int | None, k: int = 10) -> tuple[dict[str, list[tuple[str, float]]], Any]:
    """The bundled queries through maxsim.search here, without pgmaxsim.evaluation."""
    from pgmaxsim.db.adapters import Tokens
    from pgmaxsim.registry import get_index
    from pgmaxsim.search import _cursor, encode_query

    queries, _ = ev.bundled_set()
    with psycopg.connect(dsn, autocommit=True) as conn:
        info = get_index(conn, "demo")
        out = {}
        with _cursor(conn, info) as cur:
            for qid, text in queries.items():
                cur.execute("SELECT id::text, score FROM maxsim.search('demo', %s, %s, %s)",
                            (Tokens(encode_query(info, text)), k, candidates))
                out[qid] = [(i, float(s)) for i, s in cur.fetchall()]
    return out, info


def test_eval_demo_through_the_server(dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "tune.png"
    code, out, err = _cli(capsys, "--dsn", dsn, "eval", "--demo", "--plot", str(png))
    assert code == 0, err
    assert "index 'demo': 41 rows, 31 judged queries, k=10" in out
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["setting", "ndcg@5", "ndcg@10"]
    exact_line = next(line for line in lines if line.startswith("exact "))
    assert exact_line.split()[6:9] == ["1.000", "1.000", "1.0000"]  # fidelity of exact is 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    code, out, err = _cli(capsys, "--dsn", dsn, "eval", "--demo", "--json", "--candidates", "4,8,16")
    assert code == 0, err
    report = json.loads(out)
    by = {s["setting"]: s for s in report["settings"]}
    assert list(by) == ["default (= exact)", "10", "16", "exact"]  # 4 and 8 search as 10 (k)
    assert by["exact"]["top1_agreement"] == by["exact"]["recall@10_vs_exact"] == by["exact"]["score_mass@10"] == 1.0
    assert by["exact"]["recall@100"] is None
    for s in report["settings"]:
        assert s["latency_p50_ms"] > 0 and s["latency_p95_ms"] >= s["latency_p50_ms"]

    # the reported figures are what maxsim.search really returns for that setting
    _, qrels = ev.bundled_set()
    exact, _ = _independent(dsn, 41)
    for label, cand in (("10", 8), ("default (= exact)", None)):
        found, _ = _independent(dsn, cand)
        qids = list(exact)
        fid = ev.fidelity([found[q] for q in qids], [exact[q] for q in qids])
        assert by[label]["recall@10_vs_exact"] == pytest.approx(fid.recall)
        assert by[label]["score_mass@10"] == pytest.approx(fid.mass)
        assert by[label]["top1_agreement"] == pytest.approx(fid.top1)
        lib = _library(qrels, {q: dict(found[q]) for q in qids})
        for m in ("ndcg@5", "ndcg@10", "recall@5", "recall@10", "mrr@10"):
            assert by[label][m] == pytest.approx(lib[m]), (label, m)
    # the demo's 41 rows are below the codebook first stage's train_tokens: it has no codebook yet and
    # searches every row exactly, whatever the candidates (bench/FIRST_STAGE.md)
    assert by["10"]["recall@10_vs_exact"] == 1.0

    # --no-qrels: fidelity and latency only
    texts = tmp_path / "q.txt"
    texts.write_text("bees dancing\n\nsolar panels on hot days\n")
    code, out, err = _cli(capsys, "--dsn", dsn, "eval", "--index", "demo", "--no-qrels", "--queries", str(texts),
                          "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["queries"] == 2 and rep["judged"] is False
    assert all(s["ndcg@10"] is None for s in rep["settings"])

    # precomputed tokens from a .npz
    queries, _ = ev.bundled_set()
    npz = tmp_path / "q.npz"
    from pgmaxsim.search import encode_query
    with psycopg.connect(dsn) as conn:
        from pgmaxsim.registry import get_index
        info = get_index(conn, "demo")
    np.savez(npz, **{q: encode_query(info, t) for q, t in queries.items()})
    qfile, rfile = ev.bundled_dir() / "queries.jsonl", ev.bundled_dir() / "qrels.tsv"
    code, out, err = _cli(capsys, "--dsn", dsn, "eval", "--index", "demo", "--queries", str(qfile),
                          "--qrels", str(rfile), "--tokens", str(npz), "--json", "--candidates", "10")
    assert code == 0, err
    assert {s["setting"]: s for s in json.loads(out)["settings"]}["10"]["ndcg@10"] == pytest.approx(by["10"]["ndcg@10"])

    # bad input: one line, non-zero exit, no figures on stdout
    bad_ids = tmp_path / "bad.tsv"
    bad_ids.write_text(rfile.read_text() + "q01\t999\t1\n")
    missing_q = tmp_path / "few.tsv"
    missing_q.write_text("\n".join(rfile.read_text().splitlines()[:5]) + "\n")
    for argv, message in (
        (["--qrels", str(bad_ids)], "1 of 36 judged corpus ids are not rows of index 'demo' (first: '999')"),
        (["--qrels", str(missing_q)], "queries have no judgements in the qrels"),
        (["--qrels", str(tmp_path / "nope.tsv")], "nope.tsv: no such file"),
    ):
        code, out, err = _cli(capsys, "--dsn", dsn, "eval", "--index", "demo", "--queries", str(qfile), *argv)
        assert code == 1 and out == "", (argv, out, err)
        assert message in err and len(err.strip().splitlines()) == 1, err
    code, out, err = _cli(capsys, "--dsn", dsn, "eval", "--index", "nosuch", "--no-qrels", "--queries", str(texts))
    assert code == 1 and out == "" and "nosuch" in err
