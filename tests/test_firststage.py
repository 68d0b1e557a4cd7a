"""pgmaxsim.firststage (global codebook + inverted lists) against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
from pgmaxsim import firststage as fs


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> dict:
    """40 rows of 20-60 tokens around 6 topics, d=16, and a two-level codebook over them."""
    rng = np.random.default_rng(3)
    topics = unit(rng.standard_normal((6, 16)))
    rows = []
    for _ in range(40):
        n = int(rng.integers(20, 61))
        rows.append(unit(topics[rng.integers(0, 6, n)] + 0.6 * unit(rng.standard_normal((n, 16)))))
    tokens = np.concatenate(rows)
    row_of = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    cb = fs.train(tokens, n_coarse=6, n_fine=8, seed=1)
    codes = fs.assign(cb, tokens)
    return {"rows": rows, "tokens": tokens, "row_of": row_of, "cb": cb, "codes": codes,
            "lists": fs.InvertedLists.build(codes, row_of, cb.n_codes), "rng": rng}


def test_spherical_kmeans_gives_unit_centroids_that_all_hold_tokens() -> None:
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((300, 8)))
    c = fs.spherical_kmeans(x, 12, seed=0)
    assert c.shape == (12, 8)
    assert np.allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5)
    assert len(np.unique((x @ c.T).argmax(1))) == 12
    assert fs.spherical_kmeans(x[:5], 12).shape == (5, 8)  # never more centroids than tokens


def test_assign_is_the_nearest_fine_centroid_of_the_nearest_coarse_cell(data: dict) -> None:
    cb, tokens = data["cb"], data["tokens"]
    for t, code in zip(tokens, data["codes"]):
        cell = int(np.argmax(cb.coarse @ t))
        assert code == cell * cb.n_fine + int(np.argmax(cb.fine[cell] @ t))
    assert np.allclose(cb.centroid(data["codes"][:3]), cb.fine[data["codes"][:3] // 8, data["codes"][:3] % 8])


def test_assign_does_not_depend_on_the_block_size(data: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs, "BLOCK", 7)
    assert np.array_equal(fs.assign(data["cb"], data["tokens"]), data["codes"])


@pytest.mark.parametrize("per_call", [1, 45, 100_000])
def test_distinct_codes_are_each_rows_own_whatever_the_rows_per_call(data: dict, per_call: int,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs, "ASSIGN_TOKENS", per_call)
    rows = [*data["rows"][:5], np.zeros((0, 16), np.float32), *data["rows"][5:]]
    got = fs.distinct_codes(data["cb"], rows)
    assert len(got) == len(rows) and len(got[5]) == 0
    want = [np.unique(fs.assign(data["cb"], r)) for r in rows]
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert np.array_equal(np.concatenate(got[:5]), np.concatenate(
        [np.unique(data["codes"][data["row_of"] == i]) for i in range(5)]))


def test_assign_does_not_depend_on_a_tokens_norm(data: dict) -> None:
    scaled = data["tokens"] * np.linspace(0.1, 10, len(data["tokens"]), dtype=np.float32)[:, None]
    assert np.array_equal(fs.assign(data["cb"], scaled), data["codes"])


def test_probe_returns_the_nearest_codes_of_the_nearest_cells(data: dict) -> None:
    cb = data["cb"]
    q = unit(data["rng"].standard_normal((5, 16)))
    codes, sims = fs.probe(cb, q, nprobe=5, coarse_probe=2)
    assert codes.shape == sims.shape == (5, 5)
    for i, v in enumerate(q):
        cells = np.argsort(-(cb.coarse @ v), kind="stable")[:2]
        allowed = np.concatenate([c * cb.n_fine + np.arange(cb.n_fine) for c in cells])
        s = np.array([cb.centroid(np.array([a]))[0] @ v for a in allowed])
        want = np.sort(s)[::-1][:5]
        assert np.allclose(sims[i], want, atol=1e-5)
        assert set(codes[i].tolist()) <= set(allowed.tolist())
        assert np.all(np.diff(sims[i]) <= 1e-7)
    assert fs.probe(cb, q, nprobe=1000, coarse_probe=1)[0].shape == (5, cb.n_fine)


def test_inverted_lists_hold_exactly_the_rows_with_each_code(data: dict) -> None:
    lists, codes, row_of, cb = data["lists"], data["codes"], data["row_of"], data["cb"]
    for c in range(cb.n_codes):
        got = lists.rows[lists.ptr[c]:lists.ptr[c + 1]].tolist()
        assert got == sorted(set(row_of[codes == c].tolist()))
    assert lists.postings() == len({(int(c), int(r)) for c, r in zip(codes, row_of)})


def test_probed_rows_are_every_row_with_a_token_in_a_probed_cell(data: dict) -> None:
    """The completeness contract: a row is a candidate iff one of its tokens has a probed code."""
    q = unit(data["rng"].standard_normal((4, 16)))
    for nprobe in (1, 3, 10):
        codes, _ = fs.probe(data["cb"], q, nprobe)
        want = sorted({int(r) for r, c in zip(data["row_of"], data["codes"]) if c in set(codes.ravel().tolist())})
        assert fs.probed_rows(data["lists"], codes).tolist() == want


def test_candidate_scores_match_a_per_row_reference(data: dict) -> None:
    q = unit(data["rng"].standard_normal((6, 16)))
    codes, sims = fs.probe(data["cb"], q, nprobe=6)
    got = fs.candidate_scores(data["lists"], codes, sims, len(data["rows"]))
    for r in range(len(data["rows"])):
        held = set(data["codes"][data["row_of"] == r].tolist())
        want = 0.0
        for i in range(len(q)):
            hits = [s for c, s in zip(codes[i], sims[i]) if c in held]
            want += max(hits) if hits else sims[i].min()
        assert got[r] == pytest.approx(want, abs=1e-5)


def test_a_near_copy_of_one_token_makes_its_row_the_first_candidate(data: dict) -> None:
    """Near-copies of a row's tokens give that row the best candidate score (others may tie on a cell)."""
    rng, rows = data["rng"], data["rows"]
    target = 17
    needle = unit(rows[target][:3] + 0.05 * unit(rng.standard_normal((3, 16))))
    codes, sims = fs.probe(data["cb"], needle, nprobe=2)
    scores = fs.candidate_scores(data["lists"], codes, sims, len(rows))
    assert scores[target] == pytest.approx(sims[:, 0].sum()) and scores[target] == scores.max()
    best = np.flatnonzero(scores == scores.max())
    assert set(fs.candidates(data["lists"], codes, sims, len(rows), n=len(best)).tolist()) == set(best.tolist())
    assert len(fs.candidates(data["lists"], codes, sims, len(rows), n=1000)) == len(
        fs.probed_rows(data["lists"], codes))


def test_centroid_interaction_is_maxsim_over_the_rows_code_centroids(data: dict) -> None:
    cb, codes, row_of = data["cb"], data["codes"], data["row_of"]
    per_row = fs.row_codes(data["lists"], len(data["rows"]))
    q = unit(data["rng"].standard_normal((5, 16)))
    rows = np.array([3, 0, 39, 12])
    got = fs.centroid_interaction(cb, q, per_row, rows)
    for g, r in zip(got, rows):
        cents = cb.centroid(np.unique(codes[row_of == r]))
        assert g == pytest.approx(float((q @ cents.T).max(1).sum()), abs=1e-5)
    narrow = fs.candidates(data["lists"], *fs.probe(cb, q, 4), len(data["rows"]), n=5, rescore=(cb, q, per_row, 3))
    wide = fs.candidates(data["lists"], *fs.probe(cb, q, 4), len(data["rows"]), n=15)
    ci = fs.centroid_interaction(cb, q, per_row, wide)
    assert narrow.tolist() == wide[np.argsort(-ci, kind="stable")[:5]].tolist()


def reference_centroid_interaction(cb: fs.Codebook, q: np.ndarray, per_row: fs.InvertedLists,
                                   rows: np.ndarray) -> np.ndarray:
    """Float64, a row at a time: each query token's best similarity to the row's codes' centroids,
    summed over the query tokens; -inf for a row without codes."""
    qn = fs.normalise(q).astype(np.float64)
    out = []
    for r in rows:
        held = per_row.rows[per_row.ptr[r]:per_row.ptr[r + 1]]
        out.append(float((qn @ cb.centroid(held).astype(np.float64).T).max(axis=1).sum()) if len(held) else -np.inf)
    return np.array(out)


@pytest.mark.parametrize("per_token_from", [0, 10**9])   # a query token at a time, or one (held, nq) gather
@pytest.mark.parametrize("codes_used", [8, 45])          # the distinct centroids gathered, or the product with all
def test_centroid_interaction_matches_a_per_row_reference(monkeypatch: pytest.MonkeyPatch, per_token_from: int,
                                                          codes_used: int) -> None:
    """Every path of centroid_interaction against the float64 reference, on a random 5 x 9 codebook:
    rows without codes (first, inside, last), a row holding a code three times, rows read in
    stored order (one slice), out of order and twice (a gather). Equal code sets score bitwise equal."""
    monkeypatch.setattr(fs, "PER_TOKEN_FROM", per_token_from)
    monkeypatch.setattr(fs, "SIMS_BLOCK", 4)   # blocks and a partial last block
    rng = np.random.default_rng(codes_used)
    cb = fs.Codebook(unit(rng.standard_normal((5, 12))), unit(rng.standard_normal((5, 9, 12))))
    used = rng.permutation(cb.n_codes)[:codes_used]
    held = [np.sort(rng.choice(used, size=int(rng.integers(1, 8)), replace=False)) for _ in range(30)]
    held[0] = held[13] = held[-1] = np.zeros(0, dtype=np.int64)
    held[7] = np.array([used[0], used[3], used[3], used[3]])   # a code held three times
    held[8] = np.array([used[0], used[3]])                     # the same set, once each
    held[9] = held[20].copy()
    per_row = fs.InvertedLists(np.concatenate([[0], np.cumsum([len(h) for h in held])]).astype(np.int64),
                               np.concatenate(held).astype(np.int32))
    assert (2 * len(np.unique(per_row.rows)) >= cb.n_codes) == (codes_used == 45)
    q = rng.standard_normal((5, 12)).astype(np.float32)
    for rows in (np.arange(len(held)), rng.permutation(len(held)), np.array([20, 3, 20, 13, 9])):
        got = fs.centroid_interaction(cb, q, per_row, rows)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, reference_centroid_interaction(cb, q, per_row, rows), rtol=1e-6, atol=1e-6)
    got = fs.centroid_interaction(cb, q, per_row, np.arange(len(held)))
    assert got[7] == got[8] and got[9] == got[20]
    assert fs.centroid_interaction(cb, q, per_row, np.array([13]))[0] == -np.inf
    assert fs.centroid_interaction(cb, q, per_row, np.array([], dtype=np.int64)).shape == (0,)
