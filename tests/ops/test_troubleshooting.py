"""docs/troubleshooting.md quotes the messages fleetd really prints (issue 24): every quoted
message is found in one string literal of fleetd's source, ``…`` standing for a value."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "troubleshooting.md"
_PERCENT = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdrfi]")
_SPAN = re.compile(r"`([^`]+)`")


def literals() -> list[str]:
    """Every string literal of fleetd, a formatted value (f-string or %-style) as ``\\0``."""
    found: list[str] = []
    for path in (ROOT / "fleetd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr):
                found.append(
                    "".join(v.value if isinstance(v, ast.Constant) else "\0" for v in node.values)
                )
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append(node.value)
    return [_PERCENT.sub("\0", s) for s in found]


def quotes(text: str) -> list[str]:
    """The messages the page quotes: backticked text in the first cell of its tables, at the
    start of a bullet, and after "logs". Cells marked as Ollama's or pex's own are skipped."""
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cell = line.split("|")[1]
            if "Ollama's" not in cell and not cell.strip().startswith("pex:"):
                out += _SPAN.findall(cell)
        elif line.startswith("- `") and " — " in line:
            out += _SPAN.findall(line.split(" — ")[0])
    out += re.findall(r"logs\s+`([^`]+)`", text)
    return out


PREFIXES = ("Error: ", "fleetd ctl: ")
"""Put in front of a message by click and by ``fleetd ctl``, each from its own literal."""


def _words_shared(quote: str, literal: str) -> int:
    """How many of the quote's characters the literal's own text matches, over the best way
    for some text to fit both (-1 if none does): ``…`` in the quote and ``\\0`` in the literal
    stand for any text, and the quote may stop before the literal ends."""
    a, b = quote + "…", literal

    @functools.cache
    def best(i: int, j: int) -> int:
        if i == len(a):
            return 0 if j == len(b) else -1
        options = []
        if a[i] == "…":
            options += [best(i + 1, j), best(i, j + 1) if j < len(b) else -1]
        elif j < len(b) and b[j] == "\0":
            options += [best(i, j + 1), best(i + 1, j)]
        elif j < len(b) and a[i] == b[j]:
            after = best(i + 1, j + 1)
            options.append(after + 1 if after >= 0 else -1)
        return max(options, default=-1)

    return best(0, 0)


def in_one_literal(quote: str, texts: list[str]) -> bool:
    for prefix in PREFIXES:
        quote = quote.removeprefix(prefix)
    # Cheap filter first: the quote's longest constant part is in the literal, or (the quote
    # holds example values) some constant part of the literal is in the quote.
    longest = max(quote.split("…"), key=len)
    need = len(quote.replace("…", "")) / 2  # mostly the literal's own words, not values
    for text in texts:
        pieces = [p for p in text.split("\0") if len(p) >= 4]
        if longest in text or any(p in quote for p in pieces):
            if _words_shared(quote, text) >= need:
                return True
    return False


def test_troubleshooting_quotes_real_messages() -> None:
    texts = literals()
    found = quotes(DOC.read_text(encoding="utf-8"))
    assert len(found) > 15, found
    missing = [q for q in found if not in_one_literal(q, texts)]
    # The check itself: a changed word or an invented message is caught.
    assert not in_one_literal("… cannot listen at …: …", texts)
    assert not in_one_literal("task …: the flux capacitor is …", texts)
    assert not missing, f"quoted in {DOC.name} but printed nowhere by fleetd: {missing}"
