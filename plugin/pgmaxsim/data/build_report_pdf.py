"""Build ``corpus/northwind-annual-report-2025.pdf``, the demo's bundled PDF.

The report is fictional and written for pgmaxsim (CC0, see LICENSES.md). It is
built once with fpdf2 (a build-time tool, not a pgmaxsim dependency) and the
resulting PDF is committed; the demo only reads the committed file.

    python -m venv /tmp/pdfbuild && /tmp/pdfbuild/bin/pip install 'fpdf2==2.8.9'
    /tmp/pdfbuild/bin/python plugin/pgmaxsim/data/build_report_pdf.py
"""

from __future__ import annotations

from pathlib import Path

from fpdf import FPDF

OUT = Path(__file__).resolve().parent / "corpus" / "northwind-annual-report-2025.pdf"
GREEN = (34, 102, 68)
GREY = (90, 90, 90)

REGIONS = [  # region, 2024 revenue, 2025 revenue (thousand euro), members
    ("North valley", 4120, 4610, 38),
    ("South coast", 3380, 3290, 27),
    ("East hills", 2210, 2740, 19),
    ("West plains", 5030, 5480, 44),
    ("Online shop", 960, 1520, 0),
]
ENERGY = [  # month, greenhouse energy use (MWh), of which solar
    ("Jan", 410, 40), ("Feb", 380, 62), ("Mar", 330, 118), ("Apr", 260, 171),
    ("May", 190, 205), ("Jun", 150, 221), ("Jul", 140, 230), ("Aug", 150, 209),
    ("Sep", 200, 160), ("Oct", 280, 105), ("Nov", 350, 55), ("Dec", 400, 34),
]


class Report(FPDF):
    def header(self) -> None:
        if self.page_no() == 1:
            return
        self.set_font("Helvetica", "", 8)
        self.set_text_color(*GREY)
        self.cell(0, 6, "Northwind Growers Cooperative - Annual Report 2025", align="L")
        self.ln(10)

    def footer(self) -> None:
        self.set_y(-14)
        self.set_font("Helvetica", "", 8)
        self.set_text_color(*GREY)
        self.cell(0, 6, f"Page {self.page_no()}", align="C")

    def h1(self, text: str) -> None:
        self.set_font("Helvetica", "B", 18)
        self.set_text_color(*GREEN)
        self.multi_cell(0, 9, text)
        self.ln(2)

    def h2(self, text: str) -> None:
        self.set_font("Helvetica", "B", 12)
        self.set_text_color(*GREEN)
        self.multi_cell(0, 7, text)
        self.ln(1)

    def para(self, text: str) -> None:
        self.set_font("Helvetica", "", 10.5)
        self.set_text_color(20, 20, 20)
        self.multi_cell(0, 5.4, " ".join(text.split()))
        self.ln(3)


def cover(pdf: Report) -> None:
    pdf.add_page()
    pdf.set_fill_color(*GREEN)
    pdf.rect(0, 0, 210, 70, style="F")
    pdf.set_xy(18, 22)
    pdf.set_font("Helvetica", "B", 26)
    pdf.set_text_color(255, 255, 255)
    pdf.cell(0, 12, "Northwind Growers Cooperative")
    pdf.set_xy(18, 38)
    pdf.set_font("Helvetica", "", 16)
    pdf.cell(0, 10, "Annual Report 2025")
    pdf.set_xy(18, 80)
    pdf.h2("Letter from the board")
    pdf.para(
        """2025 was the cooperative's strongest year since it was founded by twelve market gardeners.
        Total revenue rose by 12.4 percent to 17.64 million euro, the online shop passed one and a half
        million euro for the first time, and our new solar array produced half of the energy
        our greenhouses used. The year also brought a dry summer on the south coast, where yields of
        tomatoes and peppers fell and revenue slipped by 2.7 percent."""
    )
    pdf.para(
        """Our members voted in March to invest in a shared cold-storage hall, which opens in the spring
        of 2026 and will let us sell stored apples and root vegetables through the winter. We thank our
        128 member farms, our 212 employees and the customers who buy our produce every week."""
    )
    pdf.h2("The year in figures")
    rows = [
        ("Revenue", "17.64 million euro (+12.4 %)"),
        ("Member farms", "128 (+6)"),
        ("Employees", "212 full-time equivalents"),
        ("Greenhouse area", "41 hectares"),
        ("Solar share of greenhouse energy", "50 percent"),
        ("Lost-time injuries", "3 (2024: 7)"),
    ]
    pdf.set_font("Helvetica", "", 10.5)
    pdf.set_text_color(20, 20, 20)
    for label, value in rows:
        pdf.cell(80, 7, label, border="B")
        pdf.cell(0, 7, value, border="B", new_x="LMARGIN", new_y="NEXT")


def revenue(pdf: Report) -> None:
    pdf.add_page()
    pdf.h1("Revenue by region")
    pdf.para(
        """Revenue is reported by sales region. West plains remains our largest region thanks to its
        grain and potato growers, and East hills grew fastest (+24 percent) after three orchards joined
        the cooperative. South coast declined because the dry summer cut vegetable yields. The online
        shop, which delivers vegetable boxes to households in four cities, grew by 58 percent."""
    )
    pdf.set_font("Helvetica", "B", 10)
    pdf.set_fill_color(225, 238, 230)
    widths = (50, 34, 34, 26, 30)
    heads = ("Region", "2024 (k euro)", "2025 (k euro)", "Change", "Member farms")
    for w, h in zip(widths, heads):
        pdf.cell(w, 8, h, border=1, fill=True, align="C")
    pdf.ln()
    pdf.set_font("Helvetica", "", 10)
    for name, r24, r25, members in REGIONS:
        change = f"{(r25 - r24) / r24 * 100:+.1f} %"
        cells = (name, f"{r24:,}", f"{r25:,}", change, str(members) if members else "-")
        for i, (w, c) in enumerate(zip(widths, cells)):
            pdf.cell(w, 7, c, border=1, align="L" if i == 0 else "R")
        pdf.ln()
    t24 = sum(r[1] for r in REGIONS)
    t25 = sum(r[2] for r in REGIONS)
    pdf.set_font("Helvetica", "B", 10)
    total = ("Total", f"{t24:,}", f"{t25:,}", f"{(t25 - t24) / t24 * 100:+.1f} %", "128")
    for i, (w, c) in enumerate(zip(widths, total)):
        pdf.cell(w, 7, c, border=1, align="L" if i == 0 else "R")
    pdf.ln(12)
    pdf.h2("Figure 1. Revenue by region, 2024 and 2025 (thousand euro)")
    x0, y0, h = 30, pdf.get_y() + 62, 58
    top = 6000
    pdf.set_draw_color(*GREY)
    pdf.line(x0, y0, x0 + 150, y0)
    pdf.set_font("Helvetica", "", 8)
    pdf.set_text_color(*GREY)
    for i, (name, r24, r25, _m) in enumerate(REGIONS):
        x = x0 + 6 + i * 29
        for j, (val, colour) in enumerate(((r24, (170, 200, 180)), (r25, GREEN))):
            bh = h * val / top
            pdf.set_fill_color(*colour)
            pdf.rect(x + j * 10, y0 - bh, 9, bh, style="F")
        pdf.set_xy(x - 4, y0 + 1)
        pdf.cell(28, 5, name, align="C")
    pdf.set_xy(x0, y0 + 8)
    pdf.cell(0, 5, "light: 2024   dark: 2025")
    pdf.set_y(y0 + 18)
    pdf.para(
        """Prices for stored produce were stable. Sales to restaurants recovered to their 2019 level,
        while sales to supermarkets, which pay lower prices, fell to 35 percent of revenue."""
    )


def operations(pdf: Report) -> None:
    pdf.add_page()
    pdf.h1("Operations: energy and water")
    pdf.para(
        """The greenhouses are our largest energy user. In February we switched on a 2.4 megawatt solar
        array on the roofs of the packing hall and the machine sheds. Over the year it produced 1,610
        megawatt hours, half of the greenhouses' consumption of 3,240 megawatt hours; from May to August it
        produced more than the greenhouses used, and the surplus went to the packing hall's cooling."""
    )
    pdf.h2("Figure 2. Greenhouse energy use and solar production per month (MWh)")
    x0, y0, h = 22, pdf.get_y() + 58, 52
    pdf.set_draw_color(*GREY)
    pdf.line(x0, y0, x0 + 168, y0)
    pdf.set_font("Helvetica", "", 8)
    pdf.set_text_color(*GREY)
    for i, (month, use, solar) in enumerate(ENERGY):
        x = x0 + 3 + i * 13.8
        pdf.set_fill_color(200, 200, 200)
        pdf.rect(x, y0 - h * use / 420, 5.5, h * use / 420, style="F")
        pdf.set_fill_color(230, 170, 40)
        pdf.rect(x + 5.8, y0 - h * solar / 420, 5.5, h * solar / 420, style="F")
        pdf.set_xy(x - 1, y0 + 1)
        pdf.cell(13, 5, month, align="C")
    pdf.set_xy(x0, y0 + 8)
    pdf.cell(0, 5, "grey: energy used   orange: solar produced")
    pdf.set_y(y0 + 18)
    pdf.h2("Water")
    pdf.para(
        """Every greenhouse now collects rainwater from its roof into two storage basins holding 9,000
        cubic metres. Drain water from the growing benches is filtered, disinfected with ultraviolet
        light and reused, so 64 percent of irrigation water was recycled or rainwater, up from 48
        percent. Drip irrigation replaced sprinklers in the last open-field plots of the South coast."""
    )
    pdf.h2("Packaging")
    pdf.para(
        """Plastic trays were replaced with moulded pulp made from our own straw. The online shop's boxes
        are collected and reused on average six times."""
    )


def people(pdf: Report) -> None:
    pdf.add_page()
    pdf.h1("People and safety")
    pdf.para(
        """At the end of the year the cooperative employed 212 full-time equivalents, plus 140 seasonal
        pickers during the harvest. Each employee received on average 19 hours of training, most of it
        in forklift driving, first aid and the safe use of plant protection products."""
    )
    pdf.h2("Safety")
    pdf.para(
        """There were three lost-time injuries in 2025, down from seven in 2024: a fall from a
        ladder in an orchard, a cut hand in the packing hall and a sprained ankle during loading. No
        injury was permanent. After the orchard fall we replaced all tripod ladders older than ten
        years and introduced a two-person rule for pruning above three metres. Heat-stress breaks,
        shaded rest areas and free drinking water were provided on days above 30 degrees."""
    )
    pdf.h2("Apprentices and volunteers")
    pdf.para(
        """Eleven apprentices trained with us in horticulture and logistics, and nine of them accepted
        permanent jobs. More than 300 volunteers from local schools helped with the autumn apple
        harvest, and 14 tonnes of unsold vegetables went to food banks in the region."""
    )


def outlook(pdf: Report) -> None:
    pdf.add_page()
    pdf.h1("Outlook for 2026 and main risks")
    pdf.para(
        """The cold-storage hall, with room for 3,500 tonnes of apples, pears and root vegetables,
        opens in April 2026. It is financed with a 6.2 million euro loan over fifteen years at a fixed
        rate of 3.1 percent and a regional grant of 1.1 million euro. We expect revenue of 18.5 to 19
        million euro in 2026."""
    )
    pdf.h2("Main risks")
    pdf.para(
        """Drought: two of the last four summers were dry; we are extending drip irrigation and water
        storage. Prices: supermarket contracts are renegotiated every year, and a price war would hit
        the South coast growers first. Energy: a mild winter helped in 2025, and gas prices remain the
        largest cost uncertainty for heated greenhouses. Labour: fewer seasonal pickers are available
        each year, so we are testing a harvesting robot for strawberries."""
    )
    pdf.h2("Contact")
    pdf.para(
        """Northwind Growers Cooperative is a fictional organisation. This report was written as sample
        content for the pgmaxsim demo and may be copied freely (CC0)."""
    )


def main() -> None:
    pdf = Report(format="A4")
    pdf.set_auto_page_break(auto=True, margin=18)
    pdf.set_margins(18, 16, 18)
    pdf.set_title("Northwind Growers Cooperative - Annual Report 2025")
    pdf.set_author("pgmaxsim contributors (CC0)")
    pdf.set_creation_date(__import__("datetime").datetime(2026, 1, 15))
    for part in (cover, revenue, operations, people, outlook):
        part(pdf)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(OUT))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {pdf.page_no()} pages)")


if __name__ == "__main__":
    main()
