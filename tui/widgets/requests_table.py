"""Recent requests, newest first, as a plain text table updated in place.

A light widget on purpose: the table changes a few times a second while thousands of messages
arrive, and a text table costs a fraction of a ``DataTable`` repaint (whose per-cell rendering
showed up as the longest stalls of the UI thread under load). It shows as many of the newest
requests as fit; pause the view (``p``) to read it at leisure.
"""

from __future__ import annotations

from rich.text import Text

from ..frame import RequestLine
from ..palette import Palette
from .text_lines import TextLines

__all__ = ["COLUMNS", "ROWS", "RequestsTable"]

#: Column keys, headers and widths (the cells of :class:`RequestLine`, in order).
COLUMNS = (
    ("done", "done", 11),
    ("request", "request", 10),
    ("conv", "conv", 6),
    ("served", "from", 10),
    ("ttft", "TTFT", 9),
    ("tpot", "TPOT", 8),
    ("e2e", "e2e", 9),
    ("prompt", "prompt rest/comp", 17),
    ("out", "out", 5),
    ("status", "status", 24),
)
#: Requests kept for the table (more than fit on any screen).
ROWS = 60


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class RequestsTable(TextLines):
    """The newest requests that fit, newest first; ``row_of(request_id)`` finds one."""

    DEFAULT_CSS = """
    RequestsTable {
        height: 1fr;
        border: round $panel-lighten-2;
        border-title-style: bold;
        padding: 0 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.lines: list[RequestLine] = []
        self.palette = Palette()
        self.set_titles("requests")
        self._cells: dict[str, tuple[str, ...]] = {}
        #: Rows whose request was already shown and whose cells changed (updated in place).
        self.updates_in_place = 0

    @property
    def visible_rows(self) -> int:
        return max(1, (self.content_size.height or 12) - 1)

    def row_of(self, request_id: str) -> int | None:
        """The row (0: newest) showing ``request_id`` (None: not shown)."""
        for i, line in enumerate(self.lines[: self.visible_rows]):
            if line.key == request_id:
                return i
        return None

    def cell(self, request_id: str, column: str) -> str | None:
        """The text of one cell of the row showing ``request_id``."""
        index = [key for key, _, _ in COLUMNS].index(column)
        for line in self.lines:
            if line.key == request_id:
                return line.cells[index]
        return None

    def show(self, lines: list[RequestLine], palette: Palette) -> None:
        """Show ``lines`` (newest first)."""
        for line in lines:
            before = self._cells.get(line.key)
            if before is not None and before != line.cells:
                self.updates_in_place += 1
        self._cells = {line.key: line.cells for line in lines}
        self.lines = lines
        self.palette = palette
        self._render_now()

    def _render_now(self) -> None:
        p = self.palette
        rows = self.lines[: self.visible_rows]
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append("".join(f"{_fit(h, w - 1):<{w}}" for _, h, w in COLUMNS).rstrip(),
                   style=f"bold {p.muted}")
        for line in rows:
            out.append("\n")
            *cells, status = line.cells
            out.append("".join(f"{_fit(c, w - 1):<{w}}" for c, (_, _, w) in
                               zip(cells, COLUMNS, strict=False)))
            failed = status != "ok"
            out.append(_fit(status, COLUMNS[-1][2]), style=f"bold {p.bad}" if failed else p.ok)
        if not rows:
            out.append("\nno requests yet", style=p.muted)
        self.set_titles(f"requests · newest {len(rows)} of {len(self.lines)}")
        self.set_text(out)

    def on_resize(self) -> None:
        self._render_now()
