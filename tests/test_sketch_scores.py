"""pgmaxsim.sketch.scores (the sketch stage of every default search) equals XTR-WARP's score written
the plain way: per query token and probed code, every entry of that code estimated from its unpacked
sign bits, the best estimate per row kept above the token's floor, summed. Pure NumPy: no server."""

from __future__ import annotations

import numpy as np
import pytest
from pgmaxsim import firststage as fs
from pgmaxsim import sketch


def reference(codec: sketch.Codec, qn: np.ndarray, codes: np.ndarray, sims: np.ndarray,
              ent: sketch.Entries) -> dict[int, tuple[float, float]]:
    """version -> (score, lifted), in float64 with Python loops."""
    nq, p = codes.shape
    rot = codec.rot(qn.shape[1]).astype(np.float64)
    scale = qn.shape[1] / codec.bits
    floor = sims[:, -1].astype(np.float64)
    bits = np.unpackbits(ent.sk, axis=1).astype(np.float64)      # (E, bits), 1 = positive residual sign
    best: dict[int, np.ndarray] = {}
    lifted: dict[int, np.ndarray] = {}
    for i in range(nq):
        w = (qn[i].astype(np.float64) @ rot) * codec.mag * scale
        for j in range(p):
            for e in np.flatnonzero(ent.code == codes[i, j]):
                v = int(ent.version[e])
                est = float(sims[i, j]) + float(w @ (2 * bits[e] - 1))   # q . c + q . r_hat
                best.setdefault(v, floor.copy())
                lifted.setdefault(v, floor.copy())
                best[v][i] = max(best[v][i], est)
                lifted[v][i] = max(lifted[v][i], est, float(sims[i, j]))
    return {v: (float(best[v].sum()), float(lifted[v].sum())) for v in best}


def case(seed: int, d: int = 96, n_entries: int = 600, n_codes: int = 40, versions: np.ndarray | None = None):
    rng = np.random.default_rng(seed)
    cb_fine = fs.normalise(rng.standard_normal((4, n_codes // 4, d)).astype(np.float32))
    cb = fs.Codebook(fs.normalise(cb_fine.mean(1)), cb_fine)
    tokens = fs.normalise(rng.standard_normal((n_entries, d)).astype(np.float32))
    code = fs.assign(cb, tokens)
    codec = sketch.train(cb, tokens, code)
    ver = versions if versions is not None else rng.integers(1, 60, n_entries)   # several tokens per row, some in one code
    ent = sketch.Entries(code.astype(np.int64), ver.astype(np.int64), sketch.encode(cb, codec, tokens, code))
    qn = fs.normalise(rng.standard_normal((7, d)).astype(np.float32))
    pc, ps = fs.probe(cb, qn, 5, 2)
    return codec, qn, pc, ps, ent


def check(codec: sketch.Codec, qn: np.ndarray, pc: np.ndarray, ps: np.ndarray, ent: sketch.Entries) -> sketch.Scores:
    got = sketch.scores(codec, qn, pc, ps, ent)
    want = reference(codec, qn, pc, ps, ent)
    assert got.versions.tolist() == sorted(want)
    assert got.base == pytest.approx(float(ps[:, -1].sum()), abs=1e-5)
    for v, s, lf in zip(got.versions.tolist(), got.score.tolist(), got.lifted.tolist()):
        assert s == pytest.approx(want[v][0], abs=1e-4)
        assert lf == pytest.approx(want[v][1], abs=1e-4)
    return got


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_equal_the_plain_reference(seed: int) -> None:
    got = check(*case(seed))
    assert len(got.versions) > 10 and (got.lifted >= got.score).all()


def test_entries_in_any_order_and_of_codes_not_probed() -> None:
    codec, qn, pc, ps, ent = case(3)
    order = np.random.default_rng(3).permutation(len(ent.code))   # the reader groups by code; a caller may not
    shuffled = sketch.Entries(ent.code[order], ent.version[order], ent.sk[order])
    got = check(codec, qn, pc, ps, shuffled)
    reached = np.isin(ent.code, pc.ravel())
    assert set(got.versions.tolist()) == set(ent.version[reached].tolist())   # only rows of probed codes


def test_sparse_versions_and_sketches_of_other_widths() -> None:
    versions = np.random.default_rng(4).choice([5, 9, 2**40, 2**40 + 3, 7 * 10**12], 600)   # range >> entries: by sort
    check(*case(4, versions=versions))
    check(*case(5, d=32))   # a 32-bit sketch (d < 64): 4 bytes per entry


def test_no_entry_reached() -> None:
    codec, qn, pc, ps, ent = case(6)
    empty = sketch.Entries.concat([], codec.bits // 8)
    assert len(sketch.scores(codec, qn, pc, ps, empty).versions) == 0
    far = sketch.Entries(ent.code + 10_000, ent.version, ent.sk)   # lists of other codes only
    got = sketch.scores(codec, qn, pc, ps, far)
    assert len(got.versions) == 0 and got.base == pytest.approx(float(ps[:, -1].sum()), abs=1e-5)


def test_dense_ids_is_unique_with_inverse() -> None:
    rng = np.random.default_rng(7)
    for v in (rng.integers(100, 200, 1000), rng.integers(0, 2**50, 1000), np.array([42])):
        d, at = sketch.dense_ids(v.astype(np.int64))
        u, inv = np.unique(v, return_inverse=True)
        assert d.tolist() == u.tolist() and at.tolist() == inv.reshape(-1).tolist()


@pytest.mark.parametrize("seed", range(4))
def test_list_versions_round_trip_in_every_form(seed: int) -> None:
    """pack_versions picks 2 bytes an entry for a list in version order with gaps under 65,536 (what
    a merge writes), else 4 or 8; unpack_lists reads any mix of the forms, concatenated as the
    search reads them, back to the same versions in the same order."""
    rng = np.random.default_rng(seed)
    lists = []
    for _ in range(60):
        m = int(rng.integers(1, 40))
        kind = rng.integers(0, 4)
        if kind == 0:     # a merge's list: sorted, close versions, repeats (one row, several tokens)
            v = np.sort(rng.integers(10**6, 10**6 + 50 * m, m))
        elif kind == 1:   # sorted, one gap past 65,535
            v = np.sort(rng.integers(0, 10**6, m))
            v[-1] = v[0] + 70_000 + int(rng.integers(0, 9))
            v = np.sort(v)
        elif kind == 2:   # not in version order
            v = rng.permutation(rng.integers(0, 10**6, m))
        else:             # a span past 2**32
            v = rng.integers(0, 2**40, m)
        lists.append(v.astype(np.int64))
    packed = [sketch.pack_versions(v) for v in lists]
    n = np.array([len(v) for v in lists])
    widths = {len(raw) // len(v) for v, (_, raw) in zip(lists, packed)}
    assert widths == {2, 4, 8}
    for v, (_, raw) in zip(lists, packed):
        if len(v) > 1 and (np.diff(v) >= 0).all() and np.diff(v).max() < 2**16:
            assert len(raw) == 2 * len(v)
    got = sketch.unpack_lists(np.array([b for b, _ in packed]), np.array([len(r) for _, r in packed]), n,
                              b"".join(r for _, r in packed))
    np.testing.assert_array_equal(got, np.concatenate(lists))
    for v, (b, raw) in zip(lists, packed):
        np.testing.assert_array_equal(sketch.unpack_versions(b, raw, len(v)), v)
