"""CPU scoring paths and the NumPy replay of the GPU kernels against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from pgmaxsim.kernels import _emulate as emu
from pgmaxsim.kernels import cupy_maxsim as gpu
from pgmaxsim.kernels import numpy_maxsim as cpu
from pgmaxsim.kernels import quantize
from pgmaxsim.kernels.quantize import (
    binarize,
    dequantize_int8,
    int8_error_bound,
    maxsim_binary,
    quantize_int8,
)
from pgmaxsim.kernels.reference import maxsim_reference, maxsim_reference_many


def _docs(rng: np.random.Generator, lengths: list[int], d: int) -> list[np.ndarray]:
    return [rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d) for n in lengths]


def _normed(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_reference_keeps_negative_maxima() -> None:
    q = np.array([[1.0, 0.0]])
    doc = np.array([[-0.5, 0.0], [-0.25, 1.0]])
    assert maxsim_reference(q, doc) == -0.25
    assert maxsim_reference(q, np.zeros((0, 2))) == float("-inf")


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_packed_all_and_subset_match_reference(dtype: type) -> None:
    rng = np.random.default_rng(1)
    docs = _docs(rng, [5, 1, 0, 37, 12, 300, 2], 24)
    q = rng.standard_normal((7, 24)).astype(np.float32)
    tokens, offsets = cpu.pack(docs, dtype)
    ref = maxsim_reference_many(q, [tokens[a:b] for a, b in zip(offsets[:-1], offsets[1:])])
    got = cpu.maxsim_packed(q, tokens, offsets)
    assert got.dtype == np.float32
    assert np.isneginf(got[2]) and np.isneginf(ref[2])
    fin = np.isfinite(ref)
    np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-5, atol=1e-5)
    idx = np.array([5, 0, 5, 3, 2])
    sub = cpu.maxsim_packed(q, tokens, offsets, idx)
    np.testing.assert_allclose(sub[[0, 1, 2, 3]], ref[[5, 0, 5, 3]], rtol=1e-5, atol=1e-5)
    assert np.isneginf(sub[4])


def test_chunking_does_not_change_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    docs = _docs(rng, list(rng.integers(1, 60, size=80)), 16)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    tokens, offsets = cpu.pack(docs, np.float32)
    whole = cpu.maxsim_packed(q, tokens, offsets)
    for block in (1, 7, 64):   # documents split across blocks, several per block
        monkeypatch.setattr(cpu, "BLOCK_TOKENS", block)
        np.testing.assert_allclose(cpu.maxsim_packed(q, tokens, offsets), whole, rtol=1e-6)


def test_all_negative_similarities_with_padding() -> None:
    """Every similarity is negative: a zero from padding must never win the max."""
    rng = np.random.default_rng(3)
    q = _normed(np.abs(rng.standard_normal((4, 8))))
    docs = [-_normed(np.abs(rng.standard_normal((n, 8)))) for n in (3, 9, 1)]
    ref = maxsim_reference_many(q, docs)
    assert (ref < 0).all()
    tokens, offsets = cpu.pack(docs, np.float32)
    np.testing.assert_allclose(cpu.maxsim_packed(q, tokens, offsets), ref, rtol=1e-5)
    padded = np.zeros((3, 9, 8), dtype=np.float32)
    for i, d in enumerate(docs):
        padded[i, : len(d)] = d
    np.testing.assert_allclose(cpu.maxsim_padded(q, padded, np.array([3, 9, 1])), ref, rtol=1e-5)
    # The classic bug (mask by multiplying with zero) would give 0 per query token here:
    buggy = (np.einsum("qd,nld->nql", q, padded) * (np.arange(9) < np.array([3, 9, 1])[:, None])[:, None, :])
    assert (buggy.max(axis=2).sum(axis=1)[[0, 2]] == 0).all()


def test_batch_matches_single() -> None:
    rng = np.random.default_rng(4)
    docs = _docs(rng, [3, 0, 50, 7], 32)
    tokens, offsets = cpu.pack(docs)
    qs = [rng.standard_normal((n, 32)).astype(np.float32) for n in (1, 24, 5)]
    got = cpu.maxsim_batch(qs, tokens, offsets, np.array([3, 2, 1]))
    for b, q in enumerate(qs):
        np.testing.assert_allclose(got[b], cpu.maxsim_packed(q, tokens, offsets, np.array([3, 2, 1])), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        cpu.maxsim_batch([np.zeros((0, 32))], tokens, offsets)


def test_topk_ties_and_bounds() -> None:
    s = np.array([1.0, 3.0, 3.0, -np.inf, 2.0, 3.0], dtype=np.float32)
    idx, val = cpu.topk(s, 4)
    assert idx.tolist() == [1, 2, 5, 4]
    assert val.tolist() == [3.0, 3.0, 3.0, 2.0]
    assert cpu.topk(s, 0)[0].size == 0
    assert cpu.topk(s, 100)[0].tolist() == [1, 2, 5, 4, 0, 3]


def test_int8_error_within_bound() -> None:
    rng = np.random.default_rng(5)
    docs = [_normed(rng.standard_normal((n, 128))) for n in rng.integers(20, 200, size=40)]
    tokens, offsets = cpu.pack(docs, np.float32)
    q = _normed(rng.standard_normal((24, 128)))
    qt, sc = quantize_int8(tokens)
    assert qt.dtype == np.int8 and np.abs(qt).max() <= 127
    assert np.abs(dequantize_int8(qt, sc) - tokens).max() <= sc.max() / 2 + 1e-7
    exact = cpu.maxsim_packed(q, tokens, offsets)
    approx = cpu.maxsim_packed(q, qt, offsets, scales=sc)
    bound = int8_error_bound(q, sc, offsets)
    assert (np.abs(approx - exact) <= bound + 1e-4).all()
    # and the int8 path equals the reference over the dequantized tokens
    ref = maxsim_reference_many(q, [dequantize_int8(qt, sc)[a:b] for a, b in zip(offsets[:-1], offsets[1:])])
    np.testing.assert_allclose(approx, ref, rtol=1e-5, atol=1e-4)
    assert np.abs(approx - exact).max() / np.abs(exact).max() < 5e-3
    with pytest.raises(ValueError):
        cpu.maxsim_packed(q, qt, offsets)


def test_int8_zero_token_and_binary() -> None:
    qt, sc = quantize_int8(np.zeros((2, 4)))
    assert sc.tolist() == [0.0, 0.0] and (dequantize_int8(qt, sc) == 0).all()
    q = np.array([[1.0, -1.0, 1.0]])
    d = np.array([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]])
    assert maxsim_binary(binarize(q), binarize(d), 3) == maxsim_reference(q, d) == 1.0


# ------------------------------------------------- the GPU kernels, replayed on the CPU

def _kernel_case(rng: np.random.Generator, d: int, int8: bool, lengths: list[int], nq: int):
    docs = _docs(rng, lengths, d)
    tokens, offsets = cpu.pack(docs, np.float32)
    host, sc = gpu.pad_tokens(tokens, int8)
    q = rng.standard_normal((nq, d)).astype(np.float32) / np.sqrt(d)
    q16 = gpu._query16(q, d, host.shape[1])
    deq = dequantize_int8(host, sc)[:, :d] if int8 else host[:, :d].astype(np.float32)
    return host, sc, q16, offsets, deq


@pytest.mark.parametrize(("d", "int8", "nq"), [(64, False, 5), (96, False, 24), (128, True, 24), (200, True, 9)])
def test_single_kernel_replay_matches_reference(d: int, int8: bool, nq: int) -> None:
    rng = np.random.default_rng(d + nq)
    host, sc, q16, offsets, deq = _kernel_case(rng, d, int8, [1, 16, 33, 0, 70, 15], nq)
    nqt, mt = gpu.single_tiling(nq, int8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    got = emu.emulate_single(q16, host, sc, starts, lengths, nqt=nqt, mt=mt)
    ref = maxsim_reference_many(q16[:, :d].astype(np.float64), [deq[a:b] for a, b in zip(starts, starts + lengths)])
    assert np.isneginf(got[3]) and np.isneginf(ref[3])
    fin = np.isfinite(ref)
    np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-4, atol=1e-4)


def test_single_kernel_replay_all_negative() -> None:
    rng = np.random.default_rng(11)
    q = _normed(np.abs(rng.standard_normal((3, 32))))
    docs = [-_normed(np.abs(rng.standard_normal((n, 32)))) for n in (5, 17, 40)]
    tokens, offsets = cpu.pack(docs, np.float16)
    got = emu.emulate_single(q.astype(np.float16), tokens, None, offsets[:-1], np.diff(offsets), nqt=1, mt=2)
    ref = maxsim_reference_many(q.astype(np.float16).astype(np.float64), [tokens[a:b] for a, b in zip(offsets[:-1], offsets[1:])])
    assert (ref < 0).all()
    np.testing.assert_allclose(got, ref, rtol=1e-4)


@pytest.mark.parametrize(("d", "int8"), [(128, False), (128, True), (160, False)])
def test_batch_kernel_replay_matches_reference(d: int, int8: bool) -> None:
    rng = np.random.default_rng(d)
    host, sc, q16, offsets, deq = _kernel_case(rng, d, int8, [2, 40, 0, 19], 13)
    mt = gpu.batch_tile_m(host.shape[1])
    assert mt is not None
    queries = [q16[:3], q16[3:12], q16[12:]]
    starts, lengths = offsets[:-1], np.diff(offsets)
    got = emu.emulate_batch(queries, host, sc, starts, lengths, mt=mt)
    for b, qb in enumerate(queries):
        ref = maxsim_reference_many(qb[:, :d].astype(np.float64), [deq[a:b2] for a, b2 in zip(starts, starts + lengths)])
        fin = np.isfinite(ref)
        np.testing.assert_allclose(got[b][fin], ref[fin], rtol=1e-4, atol=1e-4)
        assert np.isneginf(got[b][2])


def test_int8_conversion_trick_is_exact() -> None:
    vals = np.arange(-128, 128, dtype=np.int8)
    words = vals.view(np.uint8).reshape(-1, 4).copy().view(np.uint32).reshape(-1)
    lo = emu._u32_to_h2(emu.i8pair_to_h2(words, emu.SEL_LO))
    hi = emu._u32_to_h2(emu.i8pair_to_h2(words, emu.SEL_HI))
    back = np.stack([lo[0], lo[1], hi[0], hi[1]], axis=1).reshape(-1)
    assert back.tolist() == vals.astype(np.float32).tolist()


def test_gpu_module_imports_without_cupy() -> None:
    pytest.importorskip  # the module itself must import without CuPy
    if not gpu.available():
        try:
            import cupy  # noqa: F401
        except ImportError:
            with pytest.raises(ImportError, match=r"pip install 'pgmaxsim\[gpu\]'"):
                gpu.cupy()


# --- stored tiers: fp16 and int8 bytes, scored as stored -------------------------------

def _stored_docs(rng: np.random.Generator, lengths: list[int], d: int) -> list[np.ndarray]:
    return [_normed(rng.standard_normal((n, d))) if n else np.zeros((0, d), np.float32) for n in lengths]


@pytest.mark.parametrize("storage", ["fp16", "int8"])
@pytest.mark.parametrize("block", [None, 5])
def test_stored_tiers_match_reference_of_what_is_stored(storage: str, block: int | None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if block:
        monkeypatch.setattr(cpu, "BLOCK_TOKENS", block)
    rng = np.random.default_rng(11)
    d = 32
    docs = _stored_docs(rng, [40, 1, 0, 700, 3, 129], d)
    q = _normed(rng.standard_normal((9, d)))
    blobs = [quantize.encode_tokens(x, storage) for x in docs]
    assert [len(b) for b in blobs] == [quantize.stored_nbytes(len(x), d, storage) for x in docs]
    decoded = [quantize.decode_tokens(b, d, storage) for b in blobs]
    toks = [t for t, _ in decoded]
    scales = None if storage == "fp16" else [s for _, s in decoded]
    assert all(t.dtype == (np.float16 if storage == "fp16" else np.int8) for t in toks)
    ref = maxsim_reference_many(q, [quantize.dequantize(t, s) for t, s in decoded])
    got = cpu.maxsim_docs(q, toks, scales)
    assert np.isneginf(got[2]) and np.isneginf(ref[2])
    fin = np.isfinite(ref)
    np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-5, atol=1e-5)
    # the packed layout (scorer service) gives the same scores, in any order
    tokens = np.concatenate(toks)
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in toks])])
    flat = None if scales is None else np.concatenate(scales)
    sub = cpu.maxsim_packed(q, tokens, offsets, np.array([3, 0, 5]), scales=flat)
    np.testing.assert_allclose(sub, ref[[3, 0, 5]], rtol=1e-5, atol=1e-5)
    # int8 stays within its error bound of the exact (fp32) scores
    exact = maxsim_reference_many(q, docs)
    if storage == "int8":
        bound = int8_error_bound(q, flat, offsets)
        assert (np.abs(got[fin] - exact[fin]) <= bound[fin] + 1e-5).all()


def test_fp16_bit_placement_is_exact_for_every_half() -> None:
    """The fp16 -> float32 bit trick of doc_maxes reproduces every finite half, subnormals and -0 included."""
    halves = np.arange(65536, dtype=np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)].reshape(-1, 1)
    qt = np.ones((1, 1), dtype=np.float32)
    per_token = cpu.doc_maxes(qt, list(finite[:, None, :]), block=4096)[:, 0]   # one token per document
    np.testing.assert_array_equal(per_token, finite[:, 0].astype(np.float32))
    tiny = np.array([[6e-8], [-6e-8], [0.0], [65504.0]], dtype=np.float16)
    np.testing.assert_array_equal(cpu.doc_maxes(qt, list(tiny[:, None]))[:, 0], tiny[:, 0].astype(np.float32))


def test_int8_scale_applies_before_the_max() -> None:
    """A token with large codes but a small scale must not win the max."""
    codes = np.array([[127, 0], [10, 0]], dtype=np.int8)
    scales = np.array([0.001, 0.1], dtype=np.float32)   # values 0.127 and 1.0
    got = cpu.maxsim_docs(np.array([[1.0, 0.0]]), [codes], [scales])
    assert got.tolist() == pytest.approx([1.0])


def test_stored_bytes_layout_and_errors() -> None:
    t = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]])
    blob = quantize.encode_int8(t)
    assert len(blob) == 2 * (3 + 4)
    assert np.frombuffer(blob[:8], "<f4").tolist() == pytest.approx([1 / 127, 0.0])
    assert np.frombuffer(blob[8:], np.int8).tolist() == [64, -127, 32, 0, 0, 0]
    assert quantize.encode_fp16(t)[:2] == np.float16(0.5).tobytes()
    with pytest.raises(quantize.StoredTokensError, match="whole 3-dimension"):
        quantize.decode_int8(blob[:-1], 3)
    with pytest.raises(quantize.StoredTokensError, match="whole 4-dimension"):
        quantize.decode_fp16(b"\x00" * 6, 4)
    with pytest.raises(ValueError, match="unknown storage 'int4'"):
        quantize.encode_tokens(t, "int4")
    with pytest.raises(ValueError, match="need their per-token scales"):
        cpu.maxsim_docs(np.ones((1, 3)), [np.zeros((2, 3), np.int8)])
    with pytest.raises(ValueError, match="mix token dtypes"):
        cpu.maxsim_docs(np.ones((1, 3)), [np.zeros((2, 3), np.float16), np.zeros((2, 3), np.float32)])
