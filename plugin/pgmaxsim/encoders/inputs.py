"""Document inputs: images from bytes or files, PDF pages rendered to images.

Everything here works on bytes already in hand or on local paths; nothing is
ever fetched from a URL (a database worker must not reach out to the network).

Defaults (all overridable per call):

- ``DEFAULT_MAX_PIXELS`` = 2048 x 2048 (4.2 MP): an image or rendered page is
  downscaled (aspect kept, Lanczos) so that width x height <= this cap. Every
  supported vision retriever resizes further itself; the cap bounds memory and
  the bytes moved between database and worker.
- ``MAX_DECODE_PIXELS`` = 178,956,970 (Pillow's own "decompression bomb"
  error threshold): images whose header claims more pixels are refused before
  any decoding (a 20,000 x 20,000 image is refused, not decoded).
- ``DEFAULT_DPI`` = 144 for PDF rendering (an A4 page gives 1191 x 1684 px,
  about 2 MP, under the cap).

Colour handling: EXIF orientation is applied first; CMYK, greyscale (8/16-bit,
float), palette and alpha images all become 8-bit RGB. Transparent pixels are
composited onto white (a page background), never onto black.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MissingExtraError, PgmaxsimError, one_line

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

DEFAULT_MAX_PIXELS = 2048 * 2048
MAX_DECODE_PIXELS = 178_956_970
DEFAULT_DPI = 144

_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")

Source = bytes | bytearray | memoryview | str | os.PathLike


def _pil() -> Any:
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingExtraError("Pillow", "models") from exc
    return Image, ImageOps


def describe_source(data: object) -> str:
    """A short human description of an input, for error messages."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return f"<{len(data)} bytes>"
    if isinstance(data, (str, os.PathLike)):
        return repr(os.fspath(data))
    return f"<{type(data).__name__}>"


def _read_source(data: Source, what: str) -> tuple[bytes | str, str]:
    """Return (bytes or a local path string, description). Never fetches URLs."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if not raw:
            raise PgmaxsimError(f"{what} <0 bytes> is empty")
        return raw, describe_source(raw)
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        desc = repr(path)
        if _URL_RE.match(path):
            raise PgmaxsimError(
                f"{what} {desc} is a URL: pgmaxsim never fetches URLs; pass the bytes or a local path"
            )
        p = Path(path)
        if not p.is_file():
            raise PgmaxsimError(f"{what} {desc} is not a readable file")
        if p.stat().st_size == 0:
            raise PgmaxsimError(f"{what} {desc} is empty (0 bytes)")
        return path, desc
    raise PgmaxsimError(f"{what} must be bytes or a file path, not {type(data).__name__}")


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """Largest (w, h) with the same aspect ratio and w*h <= max_pixels (never upscales).

    >>> fit_size(4000, 3000, 1_000_000)
    (1154, 866)
    >>> fit_size(10, 10, 1_000_000)
    (10, 10)
    """
    if max_pixels <= 0:
        raise PgmaxsimError(f"max_pixels must be positive, got {max_pixels}")
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w = max(1, int(width * scale))
    h = max(1, int(height * scale))
    return w, h


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """Convert any Pillow mode to 8-bit RGB; alpha is composited onto white."""
    Image, _ = _pil()
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Wide greyscale: scale the actual range down to 8 bits (plain
        # convert("L") clips everything above 255 to white).
        arr = _as_float_array(image)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else arr * 0.0
        import numpy as np

        grey = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
        return grey.convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK (Pillow inverts Adobe CMYK JPEGs itself), L, 1, P, YCbCr, LAB, HSV
    return image.convert("RGB")


def _as_float_array(image: PILImage.Image) -> Any:
    import numpy as np

    if image.mode.startswith("I;16"):
        return np.asarray(image.convert("I"), dtype=np.float64)
    return np.asarray(image, dtype=np.float64)


def load_image(data: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> PILImage.Image:
    """Decode an image from bytes or a local file path into upright 8-bit RGB.

    The header is checked before decoding: over ``MAX_DECODE_PIXELS`` is an
    error. EXIF orientation is applied, then the image is downscaled so that
    width*height <= ``max_pixels``. URLs are refused.

    Raises PgmaxsimError (naming the input) when the data is empty, corrupt,
    not an image, too large, or the path is not a readable file.
    """
    Image, ImageOps = _pil()
    src, desc = _read_source(data, "image")
    fp = io.BytesIO(src) if isinstance(src, bytes) else src
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
            w, h = img.size
            if w <= 0 or h <= 0:
                raise PgmaxsimError(f"image {desc} has an empty size {w}x{h}")
            if w * h > MAX_DECODE_PIXELS:
                raise PgmaxsimError(
                    f"image {desc} is {w}x{h} = {w * h / 1e6:.0f} MP, over the "
                    f"{MAX_DECODE_PIXELS / 1e6:.0f} MP decode limit"
                )
            if img.format == "JPEG":
                # Decode JPEGs straight at a reduced scale when far over the cap.
                target = fit_size(w, h, max_pixels)
                img.draft("RGB", target)
            img.load()
            img = ImageOps.exif_transpose(img)
    except PgmaxsimError:
        raise
    except Image.UnidentifiedImageError:
        raise PgmaxsimError(f"image {desc} is not in a recognised image format") from None
    except Image.DecompressionBombError as exc:
        m = re.search(r"\((\d+) pixels\)", str(exc))
        claimed = f"{int(m.group(1)) / 1e6:.0f} MP" if m else "too many pixels"
        raise PgmaxsimError(
            f"image {desc} is {claimed}, over the {MAX_DECODE_PIXELS / 1e6:.0f} MP decode limit"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise PgmaxsimError(f"image {desc} could not be decoded: {one_line(exc)}") from None
    img = to_rgb(img)
    size = fit_size(img.width, img.height, max_pixels)
    if size != img.size:
        img = img.resize(size, Image.Resampling.LANCZOS)
    return img


@dataclass
class PdfPage:
    """One rendered PDF page. ``page_number`` is 1-based."""

    page_number: int
    image: PILImage.Image
    text: str


def _pdfium() -> Any:
    try:
        import pypdfium2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingExtraError("pypdfium2", "models") from exc
    return pypdfium2


def pdf_page_count(data: Source, *, password: str | None = None) -> int:
    """Number of pages of a PDF (PgmaxsimError if it cannot be opened)."""
    doc, _ = _open_pdf(data, password)
    try:
        return len(doc)
    finally:
        doc.close()


def _open_pdf(data: Source, password: str | None) -> tuple[Any, str]:
    pdfium = _pdfium()
    src, desc = _read_source(data, "PDF")
    try:
        doc = pdfium.PdfDocument(src, password=password)
    except pdfium.PdfiumError as exc:
        msg = str(exc)
        if "password" in msg.lower():
            raise PgmaxsimError(f"PDF {desc} is password-protected") from None
        raise PgmaxsimError(f"PDF {desc} could not be opened: {one_line(exc)}") from None
    return doc, desc


def render_pdf(
    data: Source,
    *,
    dpi: int = DEFAULT_DPI,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    pages: list[int] | None = None,
    password: str | None = None,
) -> list[PdfPage]:
    """Render PDF pages to RGB images with their text layer.

    ``pages``: 1-based page numbers to render (default all, in order). Each
    page is rendered at ``dpi`` and then capped to ``max_pixels`` (the render
    scale itself is lowered, so a huge page is never rasterised in full).
    Text is PDFium's text layer with line breaks normalised to ``\\n``.

    Raises PgmaxsimError for an empty, corrupt or password-protected PDF (no
    password given), or for a page number out of range.
    """
    if dpi <= 0:
        raise PgmaxsimError(f"dpi must be positive, got {dpi}")
    pdfium = _pdfium()
    doc, desc = _open_pdf(data, password)
    try:
        n = len(doc)
        if n == 0:
            raise PgmaxsimError(f"PDF {desc} has no pages")
        wanted = list(range(1, n + 1)) if pages is None else list(pages)
        out: list[PdfPage] = []
        for number in wanted:
            if not 1 <= number <= n:
                raise PgmaxsimError(f"PDF {desc} has {n} pages; page {number} does not exist")
            page = doc[number - 1]
            try:
                w_pt, h_pt = page.get_size()
                scale = dpi / 72.0
                px = max(1.0, w_pt * scale) * max(1.0, h_pt * scale)
                if px > max_pixels:
                    scale *= math.sqrt(max_pixels / px)
                bitmap = page.render(scale=scale, rotation=0)
                image = to_rgb(bitmap.to_pil())
                # Rounding in the renderer can overshoot the cap by a pixel row.
                size = fit_size(image.width, image.height, max_pixels)
                if size != image.size:
                    image = image.resize(size)
                textpage = page.get_textpage()
                text = textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n")
                textpage.close()
            except pdfium.PdfiumError as exc:
                raise PgmaxsimError(f"PDF {desc} page {number} could not be rendered: {one_line(exc)}") from None
            finally:
                page.close()
            out.append(PdfPage(page_number=number, image=image, text=text))
        return out
    finally:
        doc.close()
