"""The docs quote what the bot says, and the code says it: every quote in README.md and docs/*.md is found among
the messages the code builds (bot/ and cogs/), so a wording changed in the code fails here until the docs follow.

How the docs quote the bot (README.md, section "How the docs quote the bot"):

- The bot's own words (a reply, a status text, a refusal, a line the terminal or the log prints) are written in
  straight double quotes, "like this.", or as a `>` blockquote for a whole reply. Each is checked here.
- A part left out is written `…` ("… at most 50 steps."); values are written as the bot would print them ("You
  have used your 20 pictures for today; …"), and stand for whatever the code fills in there.
- Status titles, field names and button labels are in bold in the member's guide (**⏳ In queue**, **Retry**):
  each is checked too.
- Anyone else's words (Discord's client, RunPod's docs, a worker's source or error) are in *italics*, and code,
  commands, settings and JSON in backticks, and an HTML tag's attributes (a picture's alt text): none is checked.

What the code says: every string literal and f-string in bot/ and cogs/ (docstrings left out), an f-string's
values (and `{name}` or `%s` slots in a plain string) standing for any text. A quote is cut into sentences, and each
sentence must be a whole sentence of one such string, or part of one next to a `…`.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE = sorted([*(ROOT / "bot").rglob("*.py"), *(ROOT / "cogs").rglob("*.py")])

HOLE = None  # in a template: any text the code fills in
Template = tuple[str | None, ...]

# --- what the code says ----------------------------------------------------------------------------------------

_SLOT = re.compile(r"\{\w*\}|%(?:\.\d+)?[sdfr]")


def _literal(text: str) -> Template:
    """A plain string: its `{name}` (str.format) and `%s` (logging) slots are holes."""
    parts: list[str | None] = []
    for index, piece in enumerate(_SLOT.split(text)):
        if index:
            parts.append(HOLE)
        parts.append(piece)
    return tuple(parts)


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            found.add(id(first.value))
    return found


def _continued(parts: list[str | None]) -> Template:
    """A message begun or ended with a space is continued by whatever the code puts beside it (a refusal's moment,
    say): that is a hole too."""
    if parts and isinstance(parts[-1], str) and parts[-1][-1:].isspace():
        parts = [*parts, HOLE]
    if parts and isinstance(parts[0], str) and parts[0][:1].isspace():
        parts = [HOLE, *parts]
    return tuple(parts)


def _spelled(value: ast.expr) -> list[list[str | None]] | None:
    """What a value inside an f-string can read as, where the code spells it out: either text of a conditional
    (`"Upscale" if running else "Upscaled"`), or `plural(n, "picture")` ("3 pictures") and `noun(n, "picture")`;
    None for any other value (a hole)."""
    if isinstance(value, ast.IfExp):
        sides = [value.body, value.orelse]
        if all(isinstance(side, ast.Constant) and isinstance(side.value, str) for side in sides):
            return [[side.value] for side in sides]  # type: ignore[attr-defined]
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in ("plural", "noun"):
        unit = value.args[1] if len(value.args) > 1 else None
        if isinstance(unit, ast.Constant) and isinstance(unit.value, str):
            counted: list[str | None] = [HOLE, " "] if value.func.id == "plural" else []
            return [[*counted, unit.value, HOLE]]  # the hole: an "s" after any amount but 1
    return None


def _templates(path: Path) -> list[Template]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    inside_fstrings = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    templates: list[Template] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            variants: list[list[str | None]] = [[]]
            for part in node.values:
                choices = _spelled(part.value) if isinstance(part, ast.FormattedValue) else None
                if choices is None:
                    is_text = isinstance(part, ast.Constant) and isinstance(part.value, str)
                    choices = [[part.value if is_text else HOLE]]  # type: ignore[union-attr]
                variants = [[*variant, *choice] for variant in variants for choice in choices]
            templates.extend(_continued(variant) for variant in variants)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip | inside_fstrings:
            templates.append(_continued(list(_literal(node.value))))
    return templates


# A sentence ends at . ! ? or … followed by space and a capital (or an emoji, a quote, a slash command).
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=[A-Z\"“(/\u2190-\u2bff\U0001f000-\U0001faff])")
# In the code's messages a line break ends one too, and so does a sentence end at the end of a literal part.
_SENTENCE_BREAK = re.compile(rf"{_SENTENCE_END.pattern}|\s*\n\s*|(?<=[.!?])\s+$")


@dataclass(frozen=True)
class Fragment:
    """One sentence of a template, as words and holes."""

    atoms: tuple[str | None, ...]
    source: str

    @functools.cached_property
    def words(self) -> frozenset[str]:
        return frozenset(w for atom in self.atoms if atom is not None for w in _index_words(atom))


def _index_words(text: str) -> list[str]:
    """The words a sentence is looked up by: two letters or more, in lower case, without a plural's "s"."""
    return [word.lower().removesuffix("s") for word in re.findall(r"[A-Za-z][A-Za-z']+", text)]


def _fragments(template: Template, source: str) -> list[Fragment]:
    """The template cut into sentences at sentence ends inside its literal parts; holes stay where they are."""
    sentences: list[list[str | None]] = [[]]
    for part in template:
        if part is HOLE:
            sentences[-1].append(HOLE)
            continue
        pieces = _SENTENCE_BREAK.split(part)
        for index, piece in enumerate(pieces):
            if index:
                sentences.append([])
            sentences[-1].extend(word for word in piece.split() if word)
    return [Fragment(tuple(atoms), source) for atoms in sentences if any(atom for atom in atoms)]


@functools.cache
def code_fragments() -> tuple[dict[str, list[Fragment]], list[Fragment]]:
    """Every sentence of the code's messages, by the words in it; and those with no word at all ("U{n}")."""
    by_word: dict[str, list[Fragment]] = {}
    wordless = []
    for path in CODE:
        for template in _templates(path):
            for fragment in _fragments(template, str(path.relative_to(ROOT))):
                for word in fragment.words:
                    by_word.setdefault(word, []).append(fragment)
                if not fragment.words and any(atom and atom.strip(".,;:") for atom in fragment.atoms):
                    wordless.append(fragment)
    return by_word, wordless


# --- matching a quoted sentence ------------------------------------------------------------------------------------


def _pattern(atoms: tuple[str | None, ...]) -> re.Pattern[str]:
    """Words joined by white space; a hole is any text (the white space beside it optional). The sentence's final
    period is left out, as it is of the sentence looked for: a quote may end with the period a message adds."""
    pieces = []
    last = atoms[-1] if atoms else HOLE
    if last is not HOLE:
        atoms = (*atoms[:-1], last.removesuffix(".")) if last != "." else atoms[:-1]
    for index, atom in enumerate(atoms):
        if index:
            beside_hole = atom is HOLE or atoms[index - 1] is HOLE
            pieces.append(r"\s*" if beside_hole else r"\s+")
        pieces.append(r".*?" if atom is HOLE else re.escape(atom))
    return re.compile("".join(pieces), re.S)


def _windows(atoms: tuple[str | None, ...], open_start: bool, open_end: bool):
    """The runs of a fragment's words a sentence may quote: the whole fragment, or (beside a `…`) part of it."""
    starts = range(len(atoms)) if open_start else [0]
    for start in starts:
        ends = range(len(atoms), start, -1) if open_end else [len(atoms)]
        for end in ends:
            yield atoms[start:end]


def _substantial(atoms: tuple[str | None, ...], words: set[str], *, whole: bool) -> bool:
    """Whether these words of the code can stand for a sentence: a whole sentence of the code has some text of
    its own (not "{a} by {b}"); a part of one beside a `…` holds most of the quote's words (not a hole and "an")."""
    if whole:  # a label of no words ("U{n}", "< $") needs less
        return len("".join(atom for atom in atoms if atom is not None).replace(" ", "")) >= (3 if words else 1)
    shared = {word for atom in atoms if atom is not None for word in _index_words(atom)} & words
    return 2 * len(shared) >= len(words) > 0


@functools.cache
def _compiled(atoms: tuple[str | None, ...]) -> re.Pattern[str]:
    return _pattern(atoms)


def sentence_found(sentence: str, open_start: bool, open_end: bool) -> str | None:
    """The code file whose message holds this quoted sentence, or None. A whole sentence is looked for among the
    code's sentences made of no word it lacks; a part beside a `…`, in those sharing its rarest words."""
    by_word, wordless = code_fragments()
    said = set(_index_words(sentence))
    words = said & by_word.keys()  # the others may be values the code fills in ("dragon")
    if said and not words:
        return None
    if not said:  # "U1 … U4", "< $0.01"
        candidates = wordless
    elif open_start or open_end:
        rarest = sorted(words, key=lambda word: len(by_word[word]))[:3]
        candidates = list({id(f): f for word in rarest for f in by_word[word]}.values())
    else:
        candidates = [f for f in {id(f): f for word in words for f in by_word[word]}.values() if f.words <= words]
    subject = sentence.removesuffix(".")
    for fragment in candidates:
        for window in _windows(fragment.atoms, open_start, open_end):
            if _substantial(window, words, whole=not (open_start or open_end)) and _compiled(window).fullmatch(subject):
                return fragment.source
    return None


# --- what the docs quote --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quote:
    doc: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`]*`")
_DOUBLE_QUOTED = re.compile(r'"([^"]+?)"')
_BOLD = re.compile(r"\*\*([^*]+?)\*\*")
_HTML_TAG = re.compile(r"</?(?:img|a|p|div|br|picture|source|details|summary|sub|sup|span)\b[^>]*>", re.S)


def _blank(match: re.Match[str]) -> str:
    """A span blanked out, its line breaks kept so line numbers stay right."""
    return re.sub(r"[^\n]", " ", match.group(0))


def doc_quotes(text: str, doc: str) -> list[Quote]:
    """The quotes of a page of markdown named `doc`."""
    masked = _FENCE.sub(_blank, text)
    masked = re.sub(r"<!--.*?-->", _blank, masked, flags=re.S)
    masked = _HTML_TAG.sub(_blank, masked)  # an <img>'s attributes (alt text) describe a picture; they quote nothing
    without_code = _CODE_SPAN.sub(_blank, masked)
    quotes = []
    for paragraph in re.finditer(r"(?:[^\n]+\n?)+", without_code):  # a quote never spans a blank line
        for match in _DOUBLE_QUOTED.finditer(paragraph.group(0)):
            start = paragraph.start() + match.start(1)
            original = masked[start : start + len(match.group(1))]  # code spans inside a quote are the bot's too
            quotes.append(Quote(doc, text.count("\n", 0, start) + 1, " ".join(original.split())))
    for match in re.finditer(r"^> ?(.+)$", masked, re.M):
        quotes.append(Quote(doc, text.count("\n", 0, match.start()) + 1, match.group(1).strip()))
    if doc.endswith("member.md"):  # the member's guide: bold is the bot's labels
        for match in _BOLD.finditer(without_code):
            quotes.append(Quote(doc, text.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split())))
    return quotes


_ELLIPSIS = re.compile(r"\s*(?:…|\.\.\.)\s*")


def unfound_sentences(quote: Quote) -> list[str]:
    """The sentences of a quote that no message of the code holds: read with each `…` as the bot's own (a masked
    key `…wxyz`, "Painting…"), else as a part left out."""
    sentences = [s for s in _SENTENCE_END.split(quote.text) if s]
    if all(sentence_found(sentence, False, False) for sentence in sentences):
        return []
    missing = []
    pieces = _ELLIPSIS.split(quote.text)
    for index, piece in enumerate(pieces):
        sentences = [s for s in _SENTENCE_END.split(piece.strip()) if s]
        for number, sentence in enumerate(sentences):
            open_start = number == 0 and index > 0
            open_end = number == len(sentences) - 1 and index < len(pieces) - 1
            if sentence_found(sentence, open_start, open_end) is None:
                missing.append(sentence)
    return missing


ALL_QUOTES = [quote for path in DOCS for quote in doc_quotes(path.read_text(), str(path.relative_to(ROOT)))]


def test_every_sentence_the_docs_quote_is_one_the_code_says():
    unfound = [
        f"{quote}\n    not in the code: {' | '.join(missing)}"
        for quote in ALL_QUOTES
        if (missing := unfound_sentences(quote))
    ]
    assert not unfound, "\n".join(unfound)
    sentences = sum(
        len([s for p in _ELLIPSIS.split(q.text) for s in _SENTENCE_END.split(p.strip()) if s]) for q in ALL_QUOTES
    )
    print(f"{len(ALL_QUOTES)} quotes, {sentences} sentences checked in {len(DOCS)} documents")
    assert len(ALL_QUOTES) > 100


# --- the checker checks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quote", "found"),
    [
        ("The job was cancelled on RunPod.", True),
        ("The job was cancelled on RunPod by a ghost.", False),  # a whole sentence unless a … says otherwise
        ("The job was cancelled …", True),
        ("… cancelled on RunPod.", True),
        ("No result after 900 s; it was cancelled on RunPod so it stops costing GPU time.", True),  # values filled in
        ("No worker is warm, so RunPod is starting one.", False),
    ],
)
def test_the_checker_finds_the_code_s_sentences_and_only_them(quote, found):
    assert (unfound_sentences(Quote("test", 1, quote)) == []) is found


def test_the_checker_reads_every_kind_of_quote():
    page = (
        'Told "in quotes",\nand "across\na line break".\n\n> a whole reply\n\n'
        '`"code" is not` a quote, *nor are Discord\'s words*; **⏳ In queue** is a label.\n'
        '```\n"nor in a block"\n```\n'
    )
    quotes = [(quote.line, quote.text) for quote in doc_quotes(page, "docs/member.md")]
    assert quotes == [(1, "in quotes"), (2, "across a line break"), (5, "a whole reply"), (7, "⏳ In queue")]
    assert [quote.text for quote in doc_quotes(page, "docs/admin.md")][-1] == "a whole reply"  # bold is not


# --- samples of output ------------------------------------------------------------------------------------------


def _block_after(doc: Path, heading: str) -> str:
    """The first fenced block under `heading`."""
    text = doc.read_text()
    start = text.index(f"\n{heading}\n")
    match = re.compile(r"^```\w*\n(.*?)^```", re.S | re.M).search(text, start)
    assert match is not None, heading
    return match.group(1)


async def test_operator_md_shows_what_check_prints(tmp_path, discord_double, runpod):
    """operator.md's sample is the real `python -m bot check` against the doubles, its paths and ids made readable."""
    from tests.conftest import ENDPOINT
    from tests.test_check import check, synced

    await synced(tmp_path, discord_double, runpod)
    report = await check(tmp_path, discord_double, runpod)
    printed = "\n".join(report.lines).replace(str(tmp_path), "/app/data").replace(ENDPOINT, "abc123xyz") + "\n"
    shown = _block_after(ROOT / "docs" / "operator.md", "### `python -m bot check`")
    revision = re.compile(r"(latest revision )\(\d+\)")  # which every migration moves: not compared
    assert revision.sub(r"\1(N)", shown) == revision.sub(r"\1(N)", printed), (
        f"docs/operator.md should show what check prints now:\n{printed}"
    )


def test_the_workers_lines_the_docs_show_are_the_bots_own():
    """A health line quoted in the docs ("Workers: 1 ready, 0 busy, ...") is what the bot makes of those counts."""
    from bot.runpod import Health
    from bot.text import health_text

    lines = [q.text for q in ALL_QUOTES if q.text.startswith("Workers: ")]
    lines += [m.group(0) for p in DOCS for m in re.finditer(r"Workers: [^`\n]*?running\.", p.read_text())]
    assert lines
    for line in set(lines):
        counts = {word: int(number) for number, word in re.findall(r"(\d+) (\w+)", line)}
        health = Health(
            in_queue=counts["in"], in_progress=counts["running"], ready=counts["ready"], running=counts["busy"],
            initializing=counts["starting"], throttled=counts["throttled"], idle=0,
        )  # fmt: skip
        workers, jobs = health_text(health)
        assert line == f"Workers: {workers}. Jobs: {jobs}.", line
