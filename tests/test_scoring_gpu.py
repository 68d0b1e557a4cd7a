"""The CuPy kernels on a real GPU (skipped without CuPy + a CUDA device), and an
offline build check of the same source (NVRTC + ptxas, skipped when absent)."""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pgmaxsim.kernels import cupy_maxsim as gpu
from pgmaxsim.kernels import numpy_maxsim as cpu
from pgmaxsim.kernels.quantize import dequantize_int8
from pgmaxsim.kernels.reference import maxsim_reference_many

needs_gpu = pytest.mark.skipif(not gpu.available(), reason="needs CuPy and a CUDA device")


def _case(seed: int, n: int, d: int, lo: int = 1, hi: int = 300):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, hi, size=n)
    lengths[::7] = 0 if lo == 0 else lengths[::7]
    toks = rng.standard_normal((int(lengths.sum()), d)).astype(np.float32)
    toks /= np.linalg.norm(toks, axis=1, keepdims=True)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return rng, toks, offsets


def _ref(q: np.ndarray, toks: np.ndarray, offsets: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    idx = np.arange(len(offsets) - 1) if idx is None else idx
    return maxsim_reference_many(q.astype(np.float64), [toks[offsets[i]:offsets[i + 1]] for i in idx])


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    fin = np.isfinite(ref)
    assert (np.isneginf(got) == np.isneginf(ref)).all()
    assert not np.isnan(got).any()
    return float(np.linalg.norm(got[fin] - ref[fin]) / np.linalg.norm(ref[fin]))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(("d", "nq", "int8"), [(128, 24, False), (128, 24, True), (64, 3, False),
                                               (96, 40, False), (128, 64, True), (3072, 8, False)])
def test_single_query_kernel(d: int, nq: int, int8: bool) -> None:
    cp = gpu.cupy()
    rng, toks, offsets = _case(d + nq, 300 if d < 1000 else 40, d, lo=0)
    q = rng.standard_normal((nq, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    dev = gpu.upload(toks, int8=int8)
    host_tokens = (dequantize_int8(cp.asnumpy(dev.tokens), cp.asnumpy(dev.scales))[:, :d] if int8
                   else toks.astype(np.float16).astype(np.float32))
    q16 = q.astype(np.float16).astype(np.float32)
    got = cp.asnumpy(gpu.maxsim_gpu(q, dev, offsets))
    assert _rel(got, _ref(q16, host_tokens, offsets)) < 1e-4
    idx = rng.integers(0, len(offsets) - 1, size=77)
    sub = cp.asnumpy(gpu.maxsim_gpu(q, dev, offsets, idx))
    assert _rel(sub, _ref(q16, host_tokens, offsets, idx)) < 1e-4


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("int8", [False, True])
def test_batch_kernel_matches_single(int8: bool) -> None:
    cp = gpu.cupy()
    rng, toks, offsets = _case(7, 200, 128)
    dev = gpu.upload(toks, int8=int8)
    qs = [rng.standard_normal((int(n), 128)).astype(np.float32) for n in rng.integers(1, 40, size=32)]
    got = cp.asnumpy(gpu.maxsim_batch_gpu(qs, dev, offsets))
    for b in (0, 13, 31):
        single = cp.asnumpy(gpu.maxsim_gpu(qs[b], dev, offsets))
        np.testing.assert_allclose(got[b], single, rtol=1e-4, atol=1e-3)


@pytest.mark.gpu
@needs_gpu
def test_all_negative_and_topk() -> None:
    cp = gpu.cupy()
    rng = np.random.default_rng(3)
    q = np.abs(rng.standard_normal((5, 128))).astype(np.float32)
    docs = [-np.abs(rng.standard_normal((n, 128))).astype(np.float32) for n in (1, 3, 17, 40)]
    toks, offsets = cpu.pack(docs, np.float32)
    got = cp.asnumpy(gpu.maxsim_gpu(q, gpu.upload(toks), offsets))
    ref = _ref(q.astype(np.float16).astype(np.float32), toks.astype(np.float16).astype(np.float32), offsets)
    assert (ref < 0).all()
    np.testing.assert_allclose(got, ref, rtol=1e-3)
    scores = cp.asarray(rng.standard_normal(50_000).astype(np.float32))
    idx, val = gpu.topk_gpu(scores, 10)
    cidx, cval = cpu.topk(cp.asnumpy(scores), 10)
    assert idx.tolist() == cidx.tolist()


# ------------------------------------------------------------- offline build check

def _nvrtc_lib() -> str | None:
    cands = [os.environ.get("PGMAXSIM_NVRTC", "")]
    try:
        import nvidia.cuda_nvrtc as m  # type: ignore[import-not-found]

        cands += glob.glob(str(Path(list(m.__path__)[0]) / "lib" / "libnvrtc.so*"))
    except ImportError:
        pass
    return next((c for c in cands if c and os.path.exists(c)), None)


def _ptxas() -> str | None:
    try:
        import triton  # type: ignore[import-not-found]

        p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
        if p.exists():
            return str(p)
    except ImportError:
        pass
    return shutil.which("ptxas")


def test_kernels_build_for_sm90_without_spills(tmp_path: Path) -> None:
    """Compile every kernel variant the scorer uses with NVRTC and ptxas (no GPU needed)."""
    lib_path, ptxas = _nvrtc_lib(), _ptxas()
    if not lib_path or not ptxas:
        pytest.skip("NVRTC (pip nvidia-cuda-nvrtc-cu12, or PGMAXSIM_NVRTC) and ptxas not available")
    lib = ctypes.CDLL(lib_path)
    names = []
    for int8 in (False, True):
        for nq in (8, 24, 32, 64):
            nqt, mt = gpu.single_tiling(nq, int8)
            names.append(f"maxsim_single<128,{nqt},{'true' if int8 else 'false'},{mt},{gpu.WARPS}>")
        names.append(f"maxsim_batch<128,{'true' if int8 else 'false'},2,{gpu.WARPS}>")
    prog = ctypes.c_void_p()
    src = gpu.KERNEL_SOURCE_PATH.read_bytes()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"k.cu", 0, None, None) == 0
    for n in names:
        assert lib.nvrtcAddNameExpression(prog, n.encode()) == 0
    opts = [b"--gpu-architecture=compute_90", b"-std=c++17"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    assert rc == 0, log.value.decode()
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    (tmp_path / "k.ptx").write_bytes(ptx.value)
    res = subprocess.run([ptxas, "-arch=sm_90", "-v", str(tmp_path / "k.ptx"), "-o", str(tmp_path / "k.cubin")],
                         capture_output=True, text=True, check=True)
    report = res.stderr
    assert report.count("Compiling entry function") == len(names)
    assert " 0 bytes spill stores" in report and "bytes spill stores" in report
    assert all(" 0 bytes spill stores" in line for line in report.splitlines() if "spill stores" in line), report
