"""Encoders through their real loading code: the bundled MiniLM, tiny random-init
models of every ColVision family saved with save_pretrained (and a tiny LoRA
adapter over a local base), and a tiny remote-code ColEmbed. Offline."""

from __future__ import annotations

import io
import json
from pathlib import Path

import encoders_tiny as tiny
import numpy as np
import pytest
from pgmaxsim.encoders import (
    Encoder,
    ItemError,
    PdfPage,
    load_encoder,
    render_pdf,
    resolve_family,
)
from pgmaxsim.encoders.base import plan_batches
from pgmaxsim.encoders.prompts import era_of, prompt_format
from pgmaxsim.errors import PgmaxsimError
from PIL import Image

pytestmark = pytest.mark.slow  # loads models

DATA = Path(__file__).parent / "data"
ATOL = 1e-4


def maxsim(q: np.ndarray, d: np.ndarray) -> float:
    """Σ over query tokens of max over doc tokens of <q, d> (float64)."""
    return float((q.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum())


def assert_normalised(arr: np.ndarray, dim: int) -> None:
    assert arr.dtype == np.float32
    assert arr.ndim == 2 and arr.shape[1] == dim and arr.shape[0] >= 1
    np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)


def png_bytes(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def noise_image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------
# the offline default: all-MiniLM-L6-v2

PASSAGES = [
    "The mitochondria generate most of the chemical energy needed to power the cell's biochemical reactions.",
    "Mount Everest, on the border of Nepal and China, is the highest mountain above sea level.",
    "PostgreSQL is a free and open-source relational database management system emphasizing extensibility.",
    "The Great Barrier Reef off the coast of Queensland is the world's largest coral reef system.",
    "Photosynthesis lets plants convert light energy from the sun into chemical energy stored in sugars.",
    "The French Revolution began in 1789 with the storming of the Bastille in Paris.",
    "A violin has four strings tuned in perfect fifths and is played with a bow.",
    "Black holes are regions of spacetime where gravity is so strong that not even light can escape.",
    "Sourdough bread is leavened by a culture of wild yeast and lactic acid bacteria.",
    "The marathon is a long-distance running race of 42.195 kilometres.",
]
QUERIES = [
    "which organelle produces energy for cells",
    "tallest peak in the world",
    "open source SQL database",
    "largest coral reef",
    "how do plants turn sunlight into food",
    "when did the revolution in France start",
    "string instrument played with a bow",
    "gravity so strong light cannot escape",
    "bread made with wild yeast",
    "how long is a marathon race",
]


@pytest.fixture(scope="module")
def minilm() -> Encoder:
    return load_encoder()


def test_default_model_attributes(minilm: Encoder) -> None:
    assert minilm.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert (minilm.dim, minilm.kind, minilm.modalities) == (384, "multi", frozenset({"text"}))
    assert minilm.family == "text"
    assert load_encoder("default").dim == 384


def test_minilm_known_item_ranks_the_right_passage_first(minilm: Encoder) -> None:
    docs = minilm.encode_documents(PASSAGES)
    queries = minilm.encode_queries(QUERIES)
    scores = np.array([[maxsim(q, d) for d in docs] for q in queries])  # type: ignore[arg-type]
    assert list(scores.argmax(axis=1)) == list(range(len(QUERIES)))


def test_minilm_tokens_exclude_special_and_padding(minilm: Encoder) -> None:
    tok = minilm._tokenizer  # type: ignore[attr-defined]
    texts = ["Hello world", "a much longer sentence that forces padding onto the first one in the batch"]
    out = minilm.encode_documents(texts)
    for text, emb in zip(texts, out):
        n_wordpieces = len(tok(text, add_special_tokens=False)["input_ids"])
        assert isinstance(emb, np.ndarray) and emb.shape == (n_wordpieces, 384)
        assert_normalised(emb, 384)


def test_minilm_deterministic_and_batch_invariant(minilm: Encoder) -> None:
    batch = minilm.encode_documents(PASSAGES)
    again = minilm.encode_documents(PASSAGES)
    singles = [minilm.encode_documents([p])[0] for p in PASSAGES]
    for a, b, c in zip(batch, again, singles):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, atol=ATOL)
    q_batch = minilm.encode_queries(QUERIES[:4])
    for q, text in zip(q_batch, QUERIES[:4]):
        np.testing.assert_allclose(q, minilm.encode_query(text), atol=ATOL)


def test_minilm_small_token_budget_gives_same_result(minilm: Encoder) -> None:
    small = load_encoder(batch_tokens=16)
    for a, b in zip(minilm.encode_documents(PASSAGES), small.encode_documents(PASSAGES)):
        np.testing.assert_allclose(a, b, atol=ATOL)


def test_minilm_truncates_long_text(minilm: Encoder) -> None:
    emb = minilm.encode_documents(["word " * 2000])[0]
    assert isinstance(emb, np.ndarray)
    assert emb.shape == (minilm.max_length - 2, 384)  # type: ignore[attr-defined]


def test_bad_documents_give_item_errors_and_the_rest_encode(minilm: Encoder) -> None:
    items = ["good text one", "", "   ", Image.new("RGB", (8, 8)), 42, "good text two"]
    out = minilm.encode_documents(items)
    assert len(out) == len(items)
    assert isinstance(out[0], np.ndarray) and isinstance(out[5], np.ndarray)
    for i in (1, 2, 3, 4):
        assert isinstance(out[i], ItemError) and out[i].index == i
    assert "empty text" in out[1].message
    assert "takes text only" in out[3].message and "image 8x8" in out[3].item
    assert "int" in out[4].message
    np.testing.assert_allclose(out[0], minilm.encode_documents(["good text one"])[0], atol=ATOL)


def test_pdf_pages_use_their_text_layer_on_text_models(minilm: Encoder) -> None:
    pages = render_pdf(DATA / "three_pages.pdf", dpi=18)
    out = minilm.encode_documents(pages)
    for page, emb in zip(pages, out):
        np.testing.assert_allclose(emb, minilm.encode_documents([page.text])[0], atol=ATOL)
    blank = PdfPage(page_number=7, image=Image.new("RGB", (10, 10)), text=" \n")
    err = minilm.encode_documents([blank])[0]
    assert isinstance(err, ItemError) and "PDF page 7 has no text layer" in err.message


def test_queries_are_validated(minilm: Encoder) -> None:
    with pytest.raises(PgmaxsimError, match="query 1 is empty"):
        minilm.encode_queries(["fine", "  "])
    with pytest.raises(PgmaxsimError, match="query 0 must be text"):
        minilm.encode_queries([b"bytes"])  # type: ignore[list-item]


def test_dim_mismatch_is_a_clear_error(minilm: Encoder) -> None:
    minilm.check_dim(384)
    with pytest.raises(PgmaxsimError, match=r"gives 384-dimensional embeddings but index 'pages' has dim 128"):
        minilm.check_dim(128, "pages")


# ---------------------------------------------------------------------------
# names → families

@pytest.mark.parametrize(
    ("name", "family"),
    [
        (None, "text"),
        ("default", "text"),
        ("sentence-transformers/all-MiniLM-L6-v2", "text"),
        ("vidore/colqwen2.5-v0.2", "colqwen2_5"),
        ("nomic-ai/colnomic-embed-multimodal-3b", "colqwen2_5"),
        ("nomic-ai/colnomic-embed-multimodal-7b", "colqwen2_5"),
        ("nomic-ai/nomic-embed-multimodal-3b", "biqwen2_5"),
        ("nomic-ai/nomic-embed-multimodal-7b", "biqwen2_5"),
        ("vidore/colqwen2-v1.0", "colqwen2"),
        ("vidore/colpali-v1.3", "colpali"),
        ("vidore/colSmol-256M", "colidefics3"),
        ("vidore/colsmolvlm-v0.1", "colidefics3"),
        ("nvidia/llama-nemoretriever-colembed-1b-v1", "nemoretriever"),
        ("nvidia/llama-nemoretriever-colembed-3b-v1", "nemoretriever"),
        ("text:BAAI/bge-small-en-v1.5", "text"),
        ("colqwen2:/somewhere/finetune", "colqwen2"),
    ],
)
def test_resolve_family(name: str | None, family: str) -> None:
    assert resolve_family(name)[0] == family


def test_unknown_model_names_the_known_families() -> None:
    with pytest.raises(PgmaxsimError, match=r"unknown model 'acme/mystery-model'; known families: text, colqwen2_5"):
        load_encoder("acme/mystery-model")


def test_unrecognised_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whatever"}))
    with pytest.raises(PgmaxsimError, match="cannot tell the model family of folder"):
        load_encoder(str(tmp_path))


def test_revision_on_bundled_default_is_refused() -> None:
    with pytest.raises(PgmaxsimError, match="no revisions"):
        load_encoder("default", revision="main")


def test_plan_batches_respects_budget_and_covers_everything() -> None:
    costs = [7, 1, 3, 3, 10, 2, 2, 9]
    batches = plan_batches(costs, batch_tokens=10, max_items=3)
    assert sorted(i for b in batches for i in b) == list(range(len(costs)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(costs[i] for i in b) <= 10


# ---------------------------------------------------------------------------
# tiny models of every family, saved and loaded like the real checkpoints

@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    dirs = {
        "colqwen2_5": tiny.build_colqwen2_5(root / "colqwen2_5"),
        "colqwen2": tiny.build_colqwen2(root / "colqwen2"),
        "biqwen2_5": tiny.build_colqwen2_5(root / "biqwen2_5", single_vector=True),
        "colpali": tiny.build_colpali(root / "colpali"),
        "colidefics3": tiny.build_colidefics3(root / "colidefics3"),
        "bert": tiny.build_bert(root / "bert"),
        "nemo": tiny.build_remote_code_colembed(root / "nemo"),
    }
    dirs["colqwen2_5-lora"] = tiny.build_lora_adapter(dirs["colqwen2_5"], root / "colqwen2_5-lora")
    return dirs


@pytest.fixture(scope="module")
def tiny_encoders(tiny_dirs: dict[str, Path]) -> dict[str, Encoder]:
    return {fam: load_encoder(str(tiny_dirs[fam]))
            for fam in ("colqwen2_5", "colqwen2", "biqwen2_5", "colpali", "colidefics3")}


COL_FAMILIES = ["colqwen2_5", "colqwen2", "colpali", "colidefics3"]
ALL_VISION = COL_FAMILIES + ["biqwen2_5"]


@pytest.mark.parametrize("family", ALL_VISION)
def test_family_detected_from_saved_folder(family: str, tiny_dirs: dict[str, Path],
                                           tiny_encoders: dict[str, Encoder]) -> None:
    assert resolve_family(str(tiny_dirs[family]))[0] == family
    enc = tiny_encoders[family]
    assert enc.family == family
    assert enc.modalities == frozenset({"text", "image"})
    if family == "biqwen2_5":
        assert (enc.kind, enc.dim) == ("single", 64)
    else:
        assert (enc.kind, enc.dim) == ("multi", 128)
    assert enc.prompt_format == f"{family}@0.3.12"


@pytest.mark.parametrize("family", ALL_VISION)
def test_vision_documents_all_input_kinds(family: str, tiny_encoders: dict[str, Encoder]) -> None:
    enc = tiny_encoders[family]
    page = render_pdf(DATA / "three_pages.pdf", dpi=18)[0]
    items = [noise_image(100, 80, 1), png_bytes((60, 60), (0, 128, 255)), page, "a text passage"]
    out = enc.encode_documents(items)
    assert all(isinstance(o, np.ndarray) for o in out), out
    for o in out:
        assert_normalised(o, enc.dim)  # type: ignore[arg-type]
        if enc.kind == "single":
            assert o.shape == (1, enc.dim)  # type: ignore[union-attr]


@pytest.mark.parametrize("family", ALL_VISION)
def test_vision_batch_invariance_and_determinism(family: str, tiny_encoders: dict[str, Encoder]) -> None:
    enc = tiny_encoders[family]
    # different sizes → different token counts → padding inside the batch
    items = [noise_image(112, 84, 2), noise_image(56, 56, 3), "short", "a considerably longer text document here"]
    batch = enc.encode_documents(items)
    again = enc.encode_documents(items)
    singles = [enc.encode_documents([it])[0] for it in items]
    for a, b, c in zip(batch, again, singles):
        np.testing.assert_array_equal(a, b)
        assert a.shape == c.shape  # type: ignore[union-attr]
        np.testing.assert_allclose(a, c, atol=ATOL)
    queries = ["hi", "a query about the PostgreSQL database"]
    qb = enc.encode_queries(queries)
    for q, text in zip(qb, queries):
        np.testing.assert_allclose(q, enc.encode_query(text), atol=ATOL)


@pytest.mark.parametrize("family", ALL_VISION)
def test_matches_colpali_engine_own_pipeline(family: str, tiny_encoders: dict[str, Encoder]) -> None:
    """Same tokens as colpali-engine's process_queries/process_images + forward,
    one item at a time (no padding), with nothing dropped; our side batched."""
    import torch

    enc = tiny_encoders[family]
    model, proc = enc._model, enc._processor  # type: ignore[attr-defined]
    queries = ["hello world", "which page shows the red chart"]
    images = [noise_image(100, 80, 4), noise_image(60, 60, 5)]
    ours_q = enc.encode_queries(queries)
    ours_i = enc.encode_documents(images)
    for k in range(2):
        with torch.no_grad():
            q_ref = model(**proc.process_queries([queries[k]]))[0].numpy()
            batch = proc.process_images([images[k]])
            batch.pop("labels", None)
            i_ref = model(**batch)[0].numpy()
        if enc.kind == "single":
            q_ref, i_ref = q_ref[None], i_ref[None]
        np.testing.assert_allclose(ours_q[k], q_ref, atol=ATOL)
        np.testing.assert_allclose(ours_i[k], i_ref, atol=ATOL)


def test_padding_tokens_are_dropped(tiny_encoders: dict[str, Encoder]) -> None:
    enc = tiny_encoders["colqwen2_5"]
    proc = enc._processor  # type: ignore[attr-defined]
    texts = ["x", "a much longer query that pads the short one a lot"]
    out = enc.encode_queries(texts)
    for text, emb in zip(texts, out):
        n = len(proc.tokenizer(enc.query_strings([text])[0])["input_ids"])  # type: ignore[attr-defined]
        assert emb.shape == (n, 128)
    assert out[0].shape[0] < out[1].shape[0]


def test_prompt_formats_are_pinned_per_era(tiny_dirs: dict[str, Path]) -> None:
    assert (era_of("0.3.1"), era_of("0.3.10"), era_of("0.3.11"), era_of("0.3.18")) == (
        "0.3.10", "0.3.10", "0.3.11", "0.3.12")
    aug = "<|endoftext|>" * 10
    assert prompt_format("colqwen2_5", "0.3.12").query("q") == "q" + aug
    assert prompt_format("colqwen2_5", "0.3.8").query("q") == "Query: q" + aug
    assert prompt_format("biqwen2_5", "0.3.10").query("q") == "Query: q<|endoftext|>"
    assert prompt_format("biqwen2_5", "0.3.11").query("q") == "Query: q" + aug
    assert prompt_format("colpali", "0.3.10").query("q", bos="<bos>", pad="<pad>") == (
        "<bos>Query: q" + "<pad>" * 10 + "\n")
    assert prompt_format("colpali", "0.3.12").query("q", bos="<bos>", pad="<pad>") == "<bos>q" + "<pad>" * 10
    assert prompt_format("colidefics3", "0.3.10").image_prompt.startswith("<|im_start|>user\n<image>")
    assert prompt_format("colidefics3", "colidefics3@0.3.11").image_prompt.endswith("\nAssistant:")
    with pytest.raises(PgmaxsimError, match="is for family colpali"):
        prompt_format("colqwen2", "colpali@0.3.12")

    legacy = load_encoder(str(tiny_dirs["colqwen2_5"]), prompt_format="0.3.10")
    current = load_encoder(str(tiny_dirs["colqwen2_5"]))
    assert legacy.prompt_format == "colqwen2_5@0.3.10"
    assert legacy.query_strings(["q"]) == ["Query: q" + aug]  # type: ignore[attr-defined]
    # the prefix adds tokens: the pinned format really reaches the model
    assert legacy.encode_query("q").shape[0] > current.encode_query("q").shape[0]


def test_max_num_visual_tokens_caps_image_tokens(tiny_dirs: dict[str, Path],
                                                tiny_encoders: dict[str, Encoder]) -> None:
    img = noise_image(112, 112, 10)
    full = tiny_encoders["colqwen2_5"].encode_documents([img])[0]
    capped_enc = load_encoder(str(tiny_dirs["colqwen2_5"]), max_num_visual_tokens=4)
    capped = capped_enc.encode_documents([img])[0]
    # 112x112 px = 16 merged 28x28 tokens; capped at 4 → 12 fewer rows
    assert full.shape[0] - capped.shape[0] == 12  # type: ignore[union-attr]
    with pytest.raises(PgmaxsimError, match="applies to the Qwen families"):
        load_encoder(str(tiny_dirs["colpali"]), max_num_visual_tokens=4)


def test_colidefics3_pinned_image_prompt_reaches_the_model(tiny_dirs: dict[str, Path]) -> None:
    old = load_encoder(str(tiny_dirs["colidefics3"]), prompt_format="0.3.10")
    new = load_encoder(str(tiny_dirs["colidefics3"]), prompt_format="0.3.12")
    img = noise_image(56, 56, 6)
    a, b = old.encode_documents([img])[0], new.encode_documents([img])[0]
    assert a.shape != b.shape  # type: ignore[union-attr]


def test_bad_vision_items_are_isolated(tiny_encoders: dict[str, Encoder]) -> None:
    enc = tiny_encoders["colqwen2_5"]
    good = noise_image(80, 80, 7)
    items = [
        good,
        b"\x89PNG\r\n\x1a\n corrupt",
        (DATA / "huge_header.png").read_bytes(),
        "",
        Image.new("RGB", (2000, 2), (9, 9, 9)),  # aspect ratio the Qwen processor refuses
        (DATA / "cmyk.jpg").read_bytes(),
    ]
    out = enc.encode_documents(items)
    assert isinstance(out[0], np.ndarray) and isinstance(out[5], np.ndarray)
    assert "could not be decoded" in out[1].message or "recognised" in out[1].message  # type: ignore[union-attr]
    assert "400 MP" in out[2].message  # type: ignore[union-attr]
    assert out[3].message == "empty text"  # type: ignore[union-attr]
    assert isinstance(out[4], ItemError) and out[4].index == 4 and "2000x2" in out[4].item
    np.testing.assert_allclose(out[0], enc.encode_documents([good])[0], atol=ATOL)


# ---- LoRA adapters over a local base -----------------------------------------

def test_lora_adapter_loads_its_base(tiny_dirs: dict[str, Path], tiny_encoders: dict[str, Encoder]) -> None:
    import torch
    from colpali_engine.models import ColQwen2_5
    from peft import PeftModel

    adapter_dir = tiny_dirs["colqwen2_5-lora"]
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_dirs["colqwen2_5"])
    assert not (adapter_dir / "model.safetensors").exists()
    assert resolve_family(str(adapter_dir))[0] == "colqwen2_5"

    enc = load_encoder(str(adapter_dir))
    assert enc.base_model == str(tiny_dirs["colqwen2_5"])  # type: ignore[attr-defined]
    base = tiny_encoders["colqwen2_5"]
    q, qb = enc.encode_query("the adapter changes this"), base.encode_query("the adapter changes this")
    assert q.shape == qb.shape and np.abs(q - qb).max() > 1e-3

    # merged weights give what the unmerged PEFT model gives
    ref = PeftModel.from_pretrained(ColQwen2_5.from_pretrained(str(tiny_dirs["colqwen2_5"])), str(adapter_dir))
    batch = enc._tokenize(enc.query_strings(["the adapter changes this"]))  # type: ignore[attr-defined]
    with torch.no_grad():
        ref_out = ref.eval()(**batch)[0].numpy()
    np.testing.assert_allclose(q, ref_out, atol=ATOL)


def test_lora_adapter_with_missing_base_is_a_clear_error(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "adapter"
    broken.mkdir()
    for f in tiny_dirs["colqwen2_5-lora"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((broken / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "no-such-base")
    (broken / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(PgmaxsimError, match=r"could not load base .*no-such-base"):
        load_encoder(f"colqwen2_5:{broken}", local_files_only=True)


# ---- any Hugging Face text encoder ----------------------------------------------

def test_any_text_encoder_by_prefix_and_by_folder(tiny_dirs: dict[str, Path]) -> None:
    enc = load_encoder(f"text:{tiny_dirs['bert']}")
    assert (enc.dim, enc.family) == (32, "text")
    assert resolve_family(str(tiny_dirs["bert"]))[0] == "text"
    tok = enc._tokenizer  # type: ignore[attr-defined]
    text = "PostgreSQL is an open source database"
    emb = enc.encode_documents([text])[0]
    assert emb.shape == (len(tok(text, add_special_tokens=False)["input_ids"]), 32)  # type: ignore[union-attr]
    assert_normalised(emb, 32)  # type: ignore[arg-type]


# ---- remote-code ColEmbed (NVIDIA llama-nemoretriever-colembed API) ------------

def test_remote_code_colembed_loads_and_encodes(tiny_dirs: dict[str, Path]) -> None:
    enc = load_encoder(str(tiny_dirs["nemo"]), max_input_tiles=2)
    assert (enc.family, enc.dim, enc.kind) == ("nemoretriever", 24, "multi")
    assert enc.modalities == frozenset({"image"})
    items = [noise_image(100, 80, 8), "text is not a v1 passage", Image.new("RGB", (10, 10)), noise_image(20, 20, 9)]
    out = enc.encode_documents(items)
    assert isinstance(out[0], np.ndarray) and out[0].shape == (2, 24)  # 2 tiles
    assert isinstance(out[1], ItemError) and "takes images only" in out[1].message
    assert isinstance(out[2], ItemError) and "no tokens" in out[2].message  # all-zero rows = padding
    assert isinstance(out[3], np.ndarray) and out[3].shape == (1, 24)
    q = enc.encode_queries(["hi", "a longer query"])
    assert [x.shape for x in q] == [(len("query: hi"), 24), (len("query: a longer query"), 24)]
    for x in q:
        assert_normalised(x, 24)


def test_remote_code_needing_flash_attn_is_a_clear_error(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed here")
    folder = tiny.build_remote_code_colembed(tmp_path / "needs-fa", needs_flash_attn=True)
    with pytest.raises(PgmaxsimError, match=r"needs flash_attn and a CUDA GPU"):
        load_encoder(f"nemoretriever:{folder}")


def test_nvidia_colembed_without_cuda_is_refused_before_loading() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(PgmaxsimError, match=r"'nvidia/llama-nemoretriever-colembed-1b-v1' \(remote code\) needs a CUDA GPU"):
        load_encoder("nvidia/llama-nemoretriever-colembed-1b-v1")


# ---- device and dtype ------------------------------------------------------------

def test_dtype_selection_and_errors(tiny_dirs: dict[str, Path]) -> None:
    import torch

    fp32 = load_encoder(f"text:{tiny_dirs['bert']}")
    bf16 = load_encoder(f"text:{tiny_dirs['bert']}", dtype="bfloat16")
    assert bf16._model.dtype == torch.bfloat16  # type: ignore[attr-defined]
    a = fp32.encode_documents(["a small dtype check"])[0]
    b = bf16.encode_documents(["a small dtype check"])[0]
    assert b.dtype == np.float32 and a.shape == b.shape  # type: ignore[union-attr]
    np.testing.assert_allclose(a, b, atol=0.1)
    with pytest.raises(PgmaxsimError, match="unknown dtype 'float8'"):
        load_encoder(f"text:{tiny_dirs['bert']}", dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(PgmaxsimError, match="torch sees no CUDA device"):
            load_encoder(f"text:{tiny_dirs['bert']}", device="cuda")
