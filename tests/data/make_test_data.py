"""Regenerate the small real files in tests/data/ (they are committed; this
script documents how they were made).

Needs fpdf2 and Pillow (fpdf2 is not a pgmaxsim dependency; use a throwaway
virtual environment): ``pip install fpdf2 pillow && python make_test_data.py``.

Files written (all together well under 1 MB):
- ``three_pages.pdf``: a real 3-page PDF whose pages carry distinct text
  (page 2 is landscape).
- ``protected.pdf``: a 1-page PDF encrypted with the user password ``secret``.
- ``cmyk.jpg``: a CMYK JPEG (left half cyan, right half yellow).
- ``alpha.png``: an RGBA PNG, fully transparent left half, opaque red right.
- ``grey.png``: an 8-bit greyscale PNG gradient.
- ``grey16.png``: a 16-bit greyscale PNG gradient.
- ``palette.gif``: a palette ('P') GIF with a transparent colour.
- ``rotated.jpg``: a 40x20 JPEG whose EXIF orientation tag is 6 (display it
  rotated 90° clockwise: upright it is 20x40, red on top after rotation).
- ``truncated.jpg``: the first 300 bytes of a real JPEG (corrupt).
- ``huge_header.png``: a PNG whose header says 20000x20000 (only the header
  and a tiny IDAT: it must be refused before decoding).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from fpdf import FPDF
from PIL import Image

HERE = Path(__file__).resolve().parent

PAGES = [
    "Page one: the mitochondria is the powerhouse of the cell.",
    "Page two: Mount Everest is the highest mountain above sea level.",
    "Page three: PostgreSQL is an open source relational database.",
]


def make_pdf() -> None:
    pdf = FPDF(unit="pt", format="A4")
    pdf.set_font("Helvetica", size=18)
    for i, text in enumerate(PAGES):
        pdf.add_page(orientation="L" if i == 1 else "P")
        pdf.set_xy(50, 80)
        pdf.multi_cell(w=450, h=24, text=text)
        pdf.set_fill_color(30 * i, 100, 200)
        pdf.rect(50, 200, 200, 100, style="F")
    pdf.output(str(HERE / "three_pages.pdf"))

    locked = FPDF(unit="pt", format="A4")
    locked.set_encryption(owner_password="owner", user_password="secret")
    locked.add_page()
    locked.set_font("Helvetica", size=18)
    locked.set_xy(50, 80)
    locked.cell(text="You need a password to read this page.")
    locked.output(str(HERE / "protected.pdf"))


def make_images() -> None:
    cmyk = Image.new("CMYK", (64, 32), (255, 0, 0, 0))
    cmyk.paste((0, 0, 255, 0), (32, 0, 64, 32))
    cmyk.save(HERE / "cmyk.jpg", quality=95)

    alpha = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    alpha.paste((255, 0, 0, 255), (16, 0, 32, 32))
    alpha.save(HERE / "alpha.png")

    grey = Image.linear_gradient("L").resize((64, 64))
    grey.save(HERE / "grey.png")

    grey16 = Image.new("I;16", (64, 64))
    grey16.putdata([x * 1000 for y in range(64) for x in range(64)])
    grey16.save(HERE / "grey16.png")

    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    pal.paste(1, (8, 0, 16, 16))
    pal.save(HERE / "palette.gif", transparency=0)

    # Stored landscape 40x20: left half red, right half blue.  Orientation 6
    # means "rotate 90° clockwise to display": upright it is 20x40 with the
    # red half on top.
    rot = Image.new("RGB", (40, 20), (255, 0, 0))
    rot.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    rot.save(HERE / "rotated.jpg", exif=exif, quality=95)

    full = HERE / "rotated.jpg"
    (HERE / "truncated.jpg").write_bytes(full.read_bytes()[:300])


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_huge_header_png() -> None:
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 20001)  # one row only: never decoded
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    (HERE / "huge_header.png").write_bytes(png)


if __name__ == "__main__":
    make_pdf()
    make_images()
    make_huge_header_png()
    for p in sorted(HERE.iterdir()):
        print(f"{p.name:20s} {p.stat().st_size:8d} bytes")
