"""Document inputs on real files: images (EXIF, CMYK, alpha, greyscale, bombs) and PDFs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pgmaxsim.encoders.inputs import (
    MAX_DECODE_PIXELS,
    PdfPage,
    fit_size,
    load_image,
    pdf_page_count,
    render_pdf,
    to_rgb,
)
from pgmaxsim.errors import PgmaxsimError
from PIL import Image

DATA = Path(__file__).parent / "data"


def px(img: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    return img.getpixel((x, y))  # type: ignore[return-value]


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 24) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


# ---- images -----------------------------------------------------------------

def test_path_and_bytes_give_the_same_image() -> None:
    a = load_image(DATA / "cmyk.jpg")
    b = load_image((DATA / "cmyk.jpg").read_bytes())
    c = load_image(str(DATA / "cmyk.jpg"))
    assert a.mode == b.mode == c.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(np.asarray(a), np.asarray(c))


def test_bytes_like_inputs_are_accepted() -> None:
    raw = (DATA / "grey.png").read_bytes()
    assert load_image(bytearray(raw)).size == (64, 64)
    assert load_image(memoryview(raw)).size == (64, 64)


def test_cmyk_jpeg_becomes_rgb_with_right_colours() -> None:
    img = load_image(DATA / "cmyk.jpg")
    assert img.mode == "RGB" and img.size == (64, 32)
    assert close(px(img, 8, 16), (0, 255, 255))  # cyan half
    assert close(px(img, 56, 16), (255, 255, 0))  # yellow half


def test_alpha_is_composited_on_white() -> None:
    img = load_image(DATA / "alpha.png")
    assert img.mode == "RGB"
    assert px(img, 4, 4) == (255, 255, 255)  # transparent → white, not black
    assert px(img, 28, 4) == (255, 0, 0)


def test_palette_transparency_is_composited_on_white() -> None:
    img = load_image(DATA / "palette.gif")
    assert img.mode == "RGB"
    assert px(img, 2, 2) == (255, 255, 255)
    assert px(img, 12, 2) == (0, 0, 255)


def test_greyscale_8_and_16_bit() -> None:
    g8 = load_image(DATA / "grey.png")
    assert g8.mode == "RGB"
    r, g, b = px(g8, 10, 60)
    assert r == g == b
    g16 = load_image(DATA / "grey16.png")
    arr = np.asarray(g16)
    assert g16.mode == "RGB"
    # the 16-bit ramp (0..63000) keeps its gradient instead of clipping to white
    assert arr[:, 0, 0].max() == 0 and arr[:, -1, 0].min() == 255
    assert 100 < arr[0, 32, 0] < 160


def test_exif_orientation_is_applied() -> None:
    raw = Image.open(DATA / "rotated.jpg")
    assert raw.size == (40, 20)
    img = load_image(DATA / "rotated.jpg")
    assert img.size == (20, 40)
    assert close(px(img, 10, 5), (255, 0, 0), tol=40)  # red on top once upright
    assert close(px(img, 10, 35), (0, 0, 255), tol=40)


def test_pixel_cap_downscales_keeping_aspect() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (400, 200), (10, 20, 30)).save(buf, format="PNG")
    img = load_image(buf.getvalue(), max_pixels=20_000)
    assert img.width * img.height <= 20_000
    assert abs(img.width / img.height - 2.0) < 0.05
    # JPEG path (draft decoding) also honours the cap
    buf = io.BytesIO()
    Image.new("RGB", (1600, 800), (10, 20, 30)).save(buf, format="JPEG")
    img = load_image(buf.getvalue(), max_pixels=30_000)
    assert img.width * img.height <= 30_000
    assert abs(img.width / img.height - 2.0) < 0.05


def test_fit_size_never_upscales() -> None:
    assert fit_size(10, 20, 1000) == (10, 20)
    w, h = fit_size(3000, 1000, 30_000)
    assert w * h <= 30_000 and w > h


def test_huge_image_is_refused_before_decoding() -> None:
    with pytest.raises(PgmaxsimError, match=r"huge_header.png' is .*400 MP, over the 179 MP decode limit"):
        load_image(DATA / "huge_header.png")
    with pytest.raises(PgmaxsimError, match=r"400 MP, over the 179 MP decode limit"):
        load_image((DATA / "huge_header.png").read_bytes())
    assert 20000 * 20000 > MAX_DECODE_PIXELS


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (DATA / "truncated.jpg", r"could not be decoded"),
        (b"not an image at all", r"<19 bytes> is not in a recognised image format"),
        (b"", r"empty"),
        (DATA / "three_pages.pdf", r"not in a recognised image format"),
        (DATA / "does-not-exist.png", r"does-not-exist.png' is not a readable file"),
        ("https://example.com/a.png", r"is a URL: pgmaxsim never fetches URLs"),
    ],
)
def test_bad_images_raise_a_clear_error(data: object, pattern: str) -> None:
    with pytest.raises(PgmaxsimError, match=pattern):
        load_image(data)  # type: ignore[arg-type]


def test_to_rgb_modes() -> None:
    for mode in ("1", "L", "LA", "P", "RGBA", "CMYK", "I", "F", "YCbCr"):
        img = Image.new(mode, (4, 4))
        assert to_rgb(img).mode == "RGB", mode


# ---- PDFs -------------------------------------------------------------------

def test_render_pdf_pages_numbers_and_text() -> None:
    pages = render_pdf(DATA / "three_pages.pdf", dpi=72)
    assert [p.page_number for p in pages] == [1, 2, 3]
    assert all(isinstance(p, PdfPage) for p in pages)
    assert "mitochondria" in pages[0].text
    assert "Everest" in pages[1].text
    assert "PostgreSQL" in pages[2].text
    assert "\r" not in pages[0].text
    # A4 at 72 dpi: 595 x 842 points; page 2 is landscape
    (w1, h1), (w2, h2) = pages[0].image.size, pages[1].image.size
    assert abs(w1 - 595) <= 1 and abs(h1 - 842) <= 1
    assert abs(w2 - 842) <= 1 and abs(h2 - 595) <= 1
    assert all(p.image.mode == "RGB" for p in pages)
    # the page is not blank: the filled rectangle is there
    arr = np.asarray(pages[0].image)
    assert arr.min() < 200


def test_render_pdf_from_bytes_selected_pages_and_cap() -> None:
    raw = (DATA / "three_pages.pdf").read_bytes()
    pages = render_pdf(raw, dpi=144, pages=[3], max_pixels=100_000)
    assert len(pages) == 1 and pages[0].page_number == 3
    assert pages[0].image.width * pages[0].image.height <= 100_000
    assert pdf_page_count(raw) == 3
    with pytest.raises(PgmaxsimError, match="has 3 pages; page 4 does not exist"):
        render_pdf(raw, pages=[4])


def test_password_protected_pdf() -> None:
    with pytest.raises(PgmaxsimError, match="password-protected"):
        render_pdf(DATA / "protected.pdf")
    pages = render_pdf(DATA / "protected.pdf", password="secret", dpi=36)
    assert "password" in pages[0].text


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"", r"PDF <0 bytes> is empty"),
        (b"%PDF-1.4\n garbage", r"could not be opened"),
        ((DATA / "three_pages.pdf").read_bytes()[:500], r"could not be opened"),
        (DATA / "alpha.png", r"could not be opened"),
        ("http://example.com/x.pdf", r"never fetches URLs"),
    ],
)
def test_bad_pdfs_raise_a_clear_error(data: object, pattern: str) -> None:
    with pytest.raises(PgmaxsimError, match=pattern):
        render_pdf(data)  # type: ignore[arg-type]


def test_zero_byte_pdf_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    with pytest.raises(PgmaxsimError, match=r"empty.pdf' is empty"):
        render_pdf(empty)
