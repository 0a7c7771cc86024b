"""One renderer for every table raylift prints or writes: column-aligned text for the console,
GitHub Markdown for results files."""
from __future__ import annotations

from typing import Any, Sequence


def render_table(header: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False,
                 bold_rows: Sequence[int] = (), left: int = 1) -> str:
    """`rows` under `header`, every cell as `str(cell)`. Text: the first `left` columns
    left-aligned (labels), the others right-aligned (numbers), a dashed rule under the header.
    Markdown: the same alignment, the rows whose indices are in `bold_rows` in bold."""
    cells = [[str(c) for c in row] for row in rows]
    head = [str(h) for h in header]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * left + ["---:"] * (len(head) - left)) + "|"]
        for i, row in enumerate(cells):
            lines.append("| " + " | ".join(f"**{c}**" if i in bold_rows and c else c for c in row) + " |")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head] + cells) for i in range(len(head))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in cells])
