"""Layouts at ingest: patch grids of every ColVision family agree with colpali-engine's own helpers
(get_n_patches, get_image_mask, its similarity maps) on tiny models saved like the real ones; the
bundled MiniLM's character spans cut the right words of real sentences; the worker stores both, and
maxsim.explain / Index.explain / text_segments / heatmap read them back."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import torch
from pgmaxsim import Index
from pgmaxsim import explain as explaining
from pgmaxsim.db.adapters import register_tokens
from pgmaxsim.encoders import load_encoder
from pgmaxsim.encoders.base import Encoder
from pgmaxsim.encoders.layout import Layout
from PIL import Image
from worker_util import MINILM, create_index, run_once

FAMILIES = ["colqwen2_5", "colqwen2", "colpali", "colidefics3"]
# (width, height): tall, wide, square, tiny, and a strip (one row of Idefics3 tiles)
SIZES = [(60, 100), (100, 60), (112, 112), (30, 30), (200, 90)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import encoders_tiny as et

    root = tmp_path_factory.mktemp("tiny_layouts")
    return {"colqwen2_5": et.build_colqwen2_5(root / "q25"), "colqwen2": et.build_colqwen2(root / "q2"),
            "colpali": et.build_colpali(root / "pali"), "colidefics3": et.build_colidefics3(root / "idefics")}


@pytest.fixture(scope="module")
def encoders(tiny: dict[str, Path]) -> dict[str, Encoder]:
    return {f: load_encoder(str(p)) for f, p in tiny.items()}


def page(size: tuple[int, int], seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def engine_n_patches(enc: Any, size: tuple[int, int]) -> tuple[int, int]:
    """colpali-engine's (n_patches_x, n_patches_y) for a PIL size, as its interpretability code calls it."""
    proc = enc._processor
    if enc.family in ("colqwen2_5", "colqwen2"):
        return tuple(proc.get_n_patches(size, spatial_merge_size=enc._model.spatial_merge_size))
    if enc.family == "colpali":
        return tuple(proc.get_n_patches(size, patch_size=enc._model.config.vision_config.patch_size))
    tile = proc.image_processor.max_image_size["longest_edge"]
    return tuple(proc.get_n_patches((size[1], size[0]), patch_size=tile // int(proc.image_seq_len ** 0.5)))


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_grids_agree_with_colpali_engine(family: str, encoders: dict[str, Encoder]) -> None:
    enc = encoders[family]
    proc = enc._processor
    for size in SIZES:
        img = page(size)
        (emb, lay), = enc.encode_documents_laid_out([img])
        assert isinstance(lay, Layout) and lay.kind == "image" and lay.n_tokens == len(emb), (family, size)
        rows, cols = lay.grid
        batch = proc.process_images([img])
        keep = batch["attention_mask"][0].bool()
        image_mask = proc.get_image_mask(batch)[0][keep].numpy()
        # which positions are image tokens: exactly colpali-engine's image mask
        assert np.array_equal(lay.cells != -1, image_mask), (family, size)
        if family == "colidefics3":
            # the local tiles (colpali-engine's local mask) are the grid; the thumbnail has no cell
            local = proc.get_local_image_mask(batch)[0][keep].numpy()
            assert np.array_equal(lay.cells >= 0, local)
            tiles = batch["pixel_values"].shape[1] - (1 if local.sum() < image_mask.sum() else 0)
            side = int(proc.image_seq_len ** 0.5)
            assert rows * cols == tiles * side * side
            # colpali-engine's get_n_patches does not round the resized page up to whole tiles as its
            # processor does: where the page is not a multiple of the tile it is one tile short
            if size in ((112, 112), (30, 30), (200, 90)):
                assert (cols, rows) == engine_n_patches(enc, size), size
        else:
            assert (cols, rows) == engine_n_patches(enc, size), (family, size)
        assert sorted(lay.cells[lay.cells >= 0].tolist()) == list(range(rows * cols))


@pytest.mark.parametrize("family", FAMILIES)
def test_similarity_maps_equal_colpali_engines(family: str, encoders: dict[str, Encoder]) -> None:
    """Our map (layout + stored tokens) equals colpali-engine's similarity map cell by cell."""
    enc = encoders[family]
    proc = enc._processor
    img = page((100, 60) if family != "colidefics3" else (112, 112), seed=3)
    (emb, lay), = enc.encode_documents_laid_out([img])
    q = enc.encode_query("where is the table")
    ex = explaining.Explanation(1, [], kind="image", grid=lay.grid, cells=lay.cells, similarity=q @ emb.T)
    batch = proc.process_images([img])
    keep = batch["attention_mask"][0].bool()
    emb_t, q_t = torch.from_numpy(emb)[None], torch.from_numpy(q)[None]
    n_x, n_y = lay.grid[1], lay.grid[0]
    if family == "colidefics3":
        local = proc.get_local_image_mask(batch)[0][keep]
        grid = proc.rearrange_image_embeddings(emb_t[0], local, (n_x, n_y))      # (n_x, n_y, dim)
        theirs = torch.einsum("nk,ijk->nij", q_t[0], grid)
    else:
        mask = proc.get_image_mask(batch)[0][keep][None]
        try:   # colpali-engine's interpretability helpers need einops (its [interpretability] extra)
            from colpali_engine.interpretability.similarity_map_utils import (
                get_similarity_maps_from_embeddings,
            )
        except ImportError:   # the same computation: rearrange "(h w) c -> w h c", then einsum
            grid = emb_t[0][mask[0]].reshape(n_y, n_x, -1).permute(1, 0, 2)
            theirs = torch.einsum("nk,ijk->nij", q_t[0], grid)
        else:
            theirs = get_similarity_maps_from_embeddings(emb_t, q_t, (n_x, n_y), mask)[0]
    for t in range(len(q)):
        np.testing.assert_allclose(ex.patch_map(t), theirs[t].numpy().T, rtol=1e-5, atol=1e-5)


def test_text_spans_cut_the_right_words_with_the_bundled_minilm() -> None:
    enc = load_encoder(MINILM)
    texts = ["The Nile flows north through eleven countries before reaching the Mediterranean Sea.",
             "PostgreSQL's write-ahead log guarantees durability; replicas replay it continuously.",
             "Mitochondria, the powerhouse of the cell, produce ATP via oxidative phosphorylation."]
    for text, (emb, lay) in zip(texts, enc.encode_documents_laid_out(texts)):
        assert lay is not None and lay.kind == "text" and lay.n_tokens == len(emb)
        pieces = [text[s:e] for s, e in lay.spans]
        # every token is a piece of the text (word pieces of a word are adjacent), in order
        assert all(p and p.strip() == p for p in pieces)
        assert [s for s, _ in lay.spans] == sorted(s for s, _ in lay.spans)
        words = re.findall(r"\w+|[^\w\s]", text)
        joined, i = [], 0
        for s, e in lay.spans:      # glue word pieces back into words
            if joined and s == i and text[s].isalnum() and text[s - 1].isalnum():
                joined[-1] += text[s:e]
            else:
                joined.append(text[s:e])
            i = e
        assert joined == words
    wp = dict(zip(enc.query_token_strings("Where does the Nile flow?"), enc.encode_query("Where does the Nile flow?")))
    assert list(wp)[:5] == ["where", "does", "the", "nile", "flow"]


def test_the_worker_stores_layouts_and_explain_reads_them(dsn: str, tiny: dict[str, Path]) -> None:
    texts = {1: "The quick brown fox jumps over the lazy dog.",
             2: "Glaciers carve valleys slowly over thousands of years.",
             3: "A lazy afternoon by the river with a good book."}
    with psycopg.connect(dsn, autocommit=True) as db:
        register_tokens(db)
        db.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text)")
        db.execute("INSERT INTO notes VALUES (1, %s), (2, %s), (3, %s)", (texts[1], texts[2], texts[3]))
        create_index(db, "notes", "notes", model=MINILM)
        db.execute("CREATE TABLE pages (id text PRIMARY KEY, img bytea)")
        import io

        for key, size in (("wide", (100, 60)), ("tall", (60, 100))):
            buf = io.BytesIO()
            page(size, seed=len(key)).save(buf, "PNG")
            db.execute("INSERT INTO pages VALUES (%s, %s)", (key, buf.getvalue()))
        create_index(db, "pages", "pages", text=None, image="img", model=str(tiny["colqwen2_5"]), dim=128)
        run_once(dsn)

        ex = Index(db, "notes").explain("lazy dog", 1)
        assert ex.kind == "text" and [m.text for m in ex.matches] == ["lazy", "dog"]
        marked = [(s, round(v, 3)) for s, v in explaining.text_segments(texts[1], ex) if v is not None]
        assert [s for s, _ in marked] == ["lazy", "dog"]
        top = Index(db, "notes").search("lazy dog", k=1)[0]
        assert top.id == 1 and ex.score == pytest.approx(top.score, rel=2e-3, abs=2e-3)

        enc = load_encoder(str(tiny["colqwen2_5"]))
        (emb, lay), = enc.encode_documents_laid_out([page((100, 60), seed=4)])
        ex = Index(db, "pages").explain("the table", "wide")
        assert ex.kind == "image" and ex.grid == lay.grid == (2, 4)
        assert all((m.patch_row is None) == (lay.cells[m.doc_token] < 0) for m in ex.matches)
        assert all(m.patch_row * 4 + m.patch_col == lay.cells[m.doc_token] for m in ex.matches if m.patch_row is not None)
        assert ex.matches[0].text is not None
        drawn = explaining.heatmap(page((100, 60), seed=4), ex)
        assert drawn.size == (100, 60)
        tall = Index(db, "pages").explain(emb[:3], "tall")
        assert tall.grid == (4, 2)
