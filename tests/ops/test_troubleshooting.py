"""docs/troubleshooting.md quotes the messages fleetd really prints (issue 24): every quoted
message is found in one string literal of fleetd's source, ``…`` standing for a value."""

from __future__ import annotations

import ast
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


def in_one_literal(quote: str, texts: list[str]) -> bool:
    parts = [p for p in quote.removeprefix("Error: ").split("…") if p.strip()]
    for text in texts:
        at = 0
        for part in parts:
            at = text.find(part, at)
            if at < 0:
                break
            at += len(part)
        else:
            return True
    return False


def test_troubleshooting_quotes_real_messages() -> None:
    texts = literals()
    found = quotes(DOC.read_text(encoding="utf-8"))
    assert len(found) > 15, found
    missing = [q for q in found if not in_one_literal(q, texts)]
    assert not missing, f"quoted in {DOC.name} but printed nowhere by fleetd: {missing}"
