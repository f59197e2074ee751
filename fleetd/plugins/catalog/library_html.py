"""Parsers for ollama.com's library pages, which are HTML only (there is no JSON API).

They key on the ``x-test-*`` attributes ollama.com keeps for its own tests and on links to
``/library/<name>:<tag>``, never on CSS classes, which change with every restyling. A page
with nothing recognisable is a ``CatalogError``; a single unreadable entry is skipped.
"""

from __future__ import annotations

import re
from decimal import Decimal
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

from fleetd.core import names
from fleetd.core.catalog import CatalogError, CatalogModel, CatalogTag, default_size

# Elements that never get an end tag, so they must not count towards nesting depth.
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
_FIELDS = (
    "x-test-capability",
    "x-test-size",
    "x-test-pull-count",
    "x-test-tag-count",
    "x-test-updated",
)
_COUNT_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMB]?)", re.IGNORECASE)
# Units are case-sensitive so a parameter size such as "24b" is never read as bytes.
_SIZE_RE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s?([KMGT]?)B(?!\w)")
_CONTEXT_RE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?[KM](?!\w)")
_DIGEST_RE = re.compile(r"(?<!\w)[0-9a-f]{12}(?!\w)")
# Decimal, as everywhere in Ollama; "B" is a count's billion, never a size's unit.
_SCALE = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9, "T": 10**12}


def parse_count(text: str) -> int | None:
    """A pull or tag count as the library prints it: "907", "52.3K", "1.2M"; None if not one."""
    m = _COUNT_RE.fullmatch(text.replace(",", "").strip())
    return None if m is None else int(Decimal(m[1]) * _SCALE[m[2].upper()])


def parse_size(text: str) -> int | None:
    """Bytes of a decimal size ("14GB", "1.3 GB", "274MB", "4.1KB"); None if not one."""
    m = _SIZE_RE.fullmatch(text.strip())
    return None if m is None else int(Decimal(m[1]) * _SCALE[m[2]])


def _text(parts: list[str]) -> str:
    return " ".join(" ".join(parts).split())


class _Capture:
    """Text of one element, up to the end tag that balances its start tag."""

    def __init__(self, key: str, tag: str) -> None:
        self.key = key
        self.tag = tag
        self.depth = 1
        self.parts: list[str] = []


class _Page(HTMLParser):
    """Collects the text of marked elements; subclasses say which elements and what to keep.

    Nesting is counted per tag name, so the stray end tags the real pages contain (a lone
    ``</span>``) only ever disturb elements of that same name.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._open: list[_Capture] = []

    def capture(self, key: str, tag: str) -> None:
        self._open.append(_Capture(key, tag))

    def capturing(self, key: str) -> bool:
        return any(c.key == key for c in self._open)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            return
        for c in self._open:
            if c.tag == tag:
                c.depth += 1
        self.start(tag, dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        for c in list(self._open):
            if c.tag == tag:
                c.depth -= 1
                if c.depth == 0:
                    self._open.remove(c)
                    self.captured(c.key, _text(c.parts))
        self.end(tag)

    def handle_data(self, data: str) -> None:
        for c in self._open:
            c.parts.append(data)
        self.data(data)

    def start(self, tag: str, attrs: dict[str, str | None]) -> None: ...

    def end(self, tag: str) -> None: ...

    def data(self, data: str) -> None: ...

    def captured(self, key: str, text: str) -> None: ...


class _Entry:
    def __init__(self) -> None:
        self.name: str | None = None
        self.description: str | None = None
        self.fields: dict[str, list[str]] = {f: [] for f in _FIELDS}


class _LibraryPage(_Page):
    """``/library``: one ``<li x-test-model>`` per model."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[_Entry] = []
        self._entry: _Entry | None = None
        self._li_depth = 0

    def start(self, tag: str, attrs: dict[str, str | None]) -> None:
        if tag == "li" and "x-test-model" in attrs:
            self._entry = _Entry()
            self.entries.append(self._entry)
            self._li_depth = 1
            return
        entry = self._entry
        if entry is None:
            return
        if tag == "li":
            self._li_depth += 1
        if "x-test-model-title" in attrs:
            entry.name = entry.name or attrs.get("title")
            self.capture("title", tag)
        elif tag == "p" and entry.description is None and self.capturing("title"):
            self.capture("description", tag)
        for field in _FIELDS:
            if field in attrs:
                self.capture(field, tag)

    def end(self, tag: str) -> None:
        if tag == "li" and self._entry is not None:
            self._li_depth -= 1
            if self._li_depth == 0:
                self._entry = None

    def captured(self, key: str, text: str) -> None:
        if self._entry is None:
            return
        if key == "description":
            self._entry.description = text
        elif key in self._entry.fields and text:
            self._entry.fields[key].append(text)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(i.lower() for i in items))


def _first_count(texts: list[str]) -> int | None:
    return parse_count(texts[0]) if texts else None


def _model_name(text: str | None) -> str | None:
    """The entry's name if Ollama would accept it as a model name without a tag."""
    if not text or ":" in text or not names.is_valid(text.strip()):
        return None
    return text.strip()


def _run(parser: _Page, html: str) -> None:
    try:
        parser.feed(html)
        parser.close()
    except Exception as e:  # html.parser's failures on hostile input are not documented
        raise CatalogError(f"unparseable HTML: {e}") from None


def parse_library(html: str) -> list[CatalogModel]:
    """Every model of a ``/library`` page, in page order; ``CatalogError`` if none is found."""
    page = _LibraryPage()
    _run(page, html)
    models: dict[str, CatalogModel] = {}
    for entry in page.entries:
        name = _model_name(entry.name)
        if name is None or name in models:
            continue
        f = entry.fields
        models[name] = CatalogModel(
            name=name,
            description=entry.description or "",
            capabilities=_unique(f["x-test-capability"]),
            sizes=_unique(f["x-test-size"]),
            pulls=_first_count(f["x-test-pull-count"]),
            tag_count=_first_count(f["x-test-tag-count"]),
            updated=f["x-test-updated"][0] if f["x-test-updated"] else None,
        )
    if not models:
        found = f"{len(page.entries)} entries, none with a model name" if page.entries else "none"
        raise CatalogError(f"no models found ({found}), page layout changed?")
    return list(models.values())


class _ModelPage(_Page):
    """``/library/<name>/tags`` (or the model's main page): header fields and one row per tag.

    A row is the text from a link to ``/<repo>:<tag>`` up to the next other link or the end
    of the section; each tag is linked twice (mobile and desktop layouts), and both count.
    """

    def __init__(self, repo: str) -> None:
        super().__init__()
        self._prefix = f"/{repo}:"
        self.rows: dict[str, list[str]] = {}
        self._row: list[str] | None = None
        self.fields: dict[str, list[str]] = {f: [] for f in _FIELDS}
        self.description: str | None = None

    def start(self, tag: str, attrs: dict[str, str | None]) -> None:
        if tag == "a":
            path = urlsplit(attrs.get("href") or "").path
            if path.startswith(self._prefix):
                self._row = self.rows.setdefault(unquote(path[len(self._prefix) :]), [])
            else:
                self._row = None
        if attrs.get("id") == "summary-content":
            self.capture("description", tag)
        for field in _FIELDS:
            if field in attrs:
                self.capture(field, tag)

    def end(self, tag: str) -> None:
        if tag == "section":
            self._row = None

    def data(self, data: str) -> None:
        if self._row is not None:
            self._row.append(data)

    def captured(self, key: str, text: str) -> None:
        if key == "description":
            self.description = self.description or text
        elif text:
            self.fields[key].append(text)


def _tag(full: str, text: str) -> CatalogTag:
    text = text.replace(full, " ")
    size = _SIZE_RE.search(text)
    context = _CONTEXT_RE.search(text)
    digest = _DIGEST_RE.search(text)
    return CatalogTag(
        name=full,
        size=parse_size(size[0]) if size else None,
        context=context[0] if context else None,
        digest=digest[0] if digest else None,
    )


def parse_model(name: str, html: str) -> CatalogModel:
    """A model's tags page: description, parameter sizes, pulls, and every tag with its size.

    ``name`` is the model as the library names it (``magistral``, ``ns/model``); tags come back
    as ``name:tag`` in page order (the default first). ``CatalogError`` if the page lists no
    tag of that model.
    """
    repo = name if "/" in name else f"library/{name}"
    page = _ModelPage(repo)
    _run(page, html)
    tags = [
        _tag(f"{name}:{tag}", _text(parts))
        for tag, parts in page.rows.items()
        if names.is_valid(f"{name}:{tag}")
    ]
    if not tags:
        raise CatalogError(f"no tags of {name} found, page layout changed?")
    f = page.fields
    return CatalogModel(
        name=name,
        description=page.description or "",
        capabilities=_unique(f["x-test-capability"]),
        sizes=_unique(f["x-test-size"]),
        pulls=_first_count(f["x-test-pull-count"]),
        tag_count=len(tags),
        updated=f["x-test-updated"][0] if f["x-test-updated"] else None,
        size=default_size(name, tags),
        tags=tags,
    )
