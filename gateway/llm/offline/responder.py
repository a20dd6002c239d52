"""The offline model's rules: from a validated request to a `Plan` of content blocks.

Pure and deterministic: the same request gives the same plan (ids and choices are derived from
a digest of the request's messages, never from a random source). Only the last user turn
counts; magic phrases are read from its text and removed before the rules below.

1. The turn holds `tool_result` blocks: one text block reporting them, "The tool returned 7."
   or "Results: 3, 5, denied." (an `is_error` result whose text says "denied" is reported as
   "denied", any other error as "error (<text>)").
2. The text names tools of the request (word-bounded) and a verb asks to use them (call, use,
   run, invoke, execute, trigger, roll, ...), or `tool_choice` forces a tool: a short text
   block ("I'll call roll_dice.", omitted when `tool_choice` forces tool use, as the API does),
   then one `tool_use` per call. "N times", "three times", "twice", "thrice" repeat each named
   tool; "in parallel" without a count means 3; `disable_parallel_tool_use` keeps one call;
   `tool_choice: none` never calls. Arguments follow the tool's `input_schema` (see
   `_ArgFiller`): numbers next to a parameter's name ("16 sides" -> `num_sides`), then free
   numbers of the text, then the schema default, then 6 (clamped to minimum/maximum); strings
   from `name=value` or a quote next to the name, then unused quoted text, then the default,
   then the parameter's name; booleans false; enums a mentioned value or the first one;
   required parameters always present, optional ones only when the text gives them.
3. "Reply with the message 'X'" / "say 'X'" / "respond with 'X'": exactly X.
4. "count to N": "1, 2, ..., N." (N tokens); "N words" / "N tokens": N words; the word "long":
   256 words. These are generated lazily, so huge N costs no memory.
5. Otherwise a friendly reply quoting the start of the prompt.

With thinking on, a `thinking` block comes first (a short deterministic monologue), or a
`redacted_thinking` block when the prompt contains "[redacted]".

A plan's `limit` is where `max_tokens` cuts it (the request's `max_tokens`, or mid-way through
the first tool call's arguments, else mid-text, under `[[max_tokens]]`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

from gateway.llm.offline.signing import seal_redacted
from gateway.llm.offline.validation import Block, MessagesRequest, error_type_for

LONG_DEFAULT = 256
MAX_GENERATED = 10_000_000
MAX_CALLS = 64
_SMALL_NUMBER = 6
_FRAGMENT = 8

_MAGIC_RE = re.compile(r"\[\[\s*(error|http|tps|ttft)\s*:\s*([^\]\s]+)\s*\]\]|\[\[\s*max_tokens\s*\]\]", re.I)
_WORD_TOKEN_RE = re.compile(r"\s*\S+")
_NUMBER_WORDS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
}
_NUM = r"-?\d+(?:\.\d+)?"
_NUMW = _NUM + "|" + "|".join(_NUMBER_WORDS)
_FREE_NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_COUNT_RE = re.compile(rf"\b({_NUMW})\s+times\b|\b(once|twice|thrice)\b", re.I)
_PARALLEL_RE = re.compile(r"\bin\s+parallel\b|\bparallel(?:ly)?\b|\bsimultaneously\b", re.I)
_VERB_RE = re.compile(
    r"\b(?:call|calls|calling|use|using|run|running|invoke|execute|trigger|try|roll|fire)\b", re.I
)
_QUOTE_RE = re.compile(
    r"\"([^\"\n]+)\"|\u201c([^\u201d\n]+)\u201d|\u2018([^\u2019\n]+)\u2019|(?<![\w])'([^'\n]+?)'(?![\w])"
)
_REPLY_RE = re.compile(
    r"\b(?:reply|respond|answer|say|repeat|write\s+back)\b[^'\"\u201c\u2018\n]{0,60}?(['\"\u201c\u2018])",
    re.I,
)
_CLOSERS = {"'": "['\u2019]", '"': '"', "\u201c": '[\u201d"]', "\u2018": "[\u2019']"}
_COUNT_TO_RE = re.compile(r"\bcount(?:ing)?\s+(?:from\s+\d+\s+)?(?:up\s+)?to\s+(\d+)", re.I)
_N_WORDS_RE = re.compile(r"\b(\d+)\s+(?:words|tokens)\b", re.I)
_LONG_RE = re.compile(r"\blong\b", re.I)
_NAME_SPLIT_RE = re.compile(r"[_\-\s]+|(?<=[a-z])(?=[A-Z])")
_GENERIC_WORDS = frozenset({"num", "number", "n", "count", "of", "the", "a", "an", "is", "to", "value", "id"})
_VOCABULARY = (
    "the agent gateway streams every token to each client as soon as it arrives while the "
    "model keeps thinking about tools results and replies so that people can watch the run "
    "unfold in real time and cancel or approve whenever they like"
).split()
_TEMPLATES = (
    'Hello! You said: "{snippet}". How can I help?',
    'Thanks for your message: "{snippet}". I am the offline model, happy to help.',
    'Got it: "{snippet}". Let me know what you would like to do next.',
)


class TokenSource(Protocol):
    """The tokens (text deltas, or argument-JSON fragments) of one block, in order."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[str]: ...


@dataclass(frozen=True, slots=True)
class WordTokens:
    """`n` filler words, chosen from a fixed vocabulary by `seed`; the last one ends with '.'."""

    n: int
    seed: int

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[str]:
        vocabulary, size, seed, last = _VOCABULARY, len(_VOCABULARY), self.seed, self.n - 1
        for i in range(self.n):
            word = vocabulary[(seed + i * 7) % size]
            if i == 0:
                word = word.capitalize()
            else:
                word = " " + word
            yield word + "." if i == last else word


@dataclass(frozen=True, slots=True)
class CountTokens:
    """'1', ', 2', ..., ', n.': one token per number."""

    n: int

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[str]:
        last = self.n
        for i in range(1, last + 1):
            token = str(i) if i == 1 else f", {i}"
            yield token + "." if i == last else token


@dataclass(slots=True)
class PlannedBlock:
    """One content block of the reply. `kind` is text, thinking, redacted_thinking or tool_use;
    `tokens` are its deltas (for tool_use, fragments of the arguments' JSON)."""

    kind: str
    tokens: TokenSource = ()
    tool_id: str = ""
    name: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    data: str = ""


@dataclass(slots=True)
class Plan:
    """What to answer. `limit`: cut with stop_reason max_tokens after this many output tokens.
    `error_type`: an `error` event after `error_after` tokens (mid-stream failure).
    `http_status`: fail the request at once with this status. `tokens_per_second`: a pacing
    override for this request."""

    message_id: str
    blocks: list[PlannedBlock]
    stop_reason: str
    limit: int | None = None
    error_type: str | None = None
    error_after: int = 0
    http_status: int | None = None
    tokens_per_second: float | None = None
    #: Wait this long before the response starts (a model's time to first token).
    first_token_delay_s: float = 0.0

    @property
    def total_tokens(self) -> int:
        return sum(len(b.tokens) for b in self.blocks)


def words(text: str) -> list[str]:
    """Word-ish tokens, each carrying its leading whitespace: 'a b' -> ['a', ' b']."""
    return _WORD_TOKEN_RE.findall(text)


def fragments(json_text: str) -> list[str]:
    """Split arguments' JSON into at least two fragments (when it has two characters)."""
    size = max(1, min(_FRAGMENT, len(json_text) // 2))
    return [json_text[i : i + size] for i in range(0, len(json_text), size)]


def _ident(prefix: str, seed: bytes, label: bytes) -> str:
    digest = hashlib.blake2b(seed + label, digest_size=18).digest()
    return prefix + base64.urlsafe_b64encode(digest).decode("ascii")


def _parse_number(token: str) -> int | float:
    lowered = token.lower()
    if lowered in _NUMBER_WORDS:
        return _NUMBER_WORDS[lowered]
    value = float(token)
    return int(value) if value.is_integer() and "." not in token else value


def _block_text(block: Block) -> str:
    content = block.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content.strip()
    parts = [p.get("text", "") if p.get("type") == "text" else f"[{p.get('type')}]" for p in content]
    return " ".join(p.strip() for p in parts if p)


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _ArgFiller:
    """Fills a tool's arguments from the prompt text, following its JSON schema."""

    def __init__(self, text: str, reserved: list[tuple[int, int]]) -> None:
        self.text = text
        self.used = list(reserved)
        self.quotes = [
            (m.start(), m.end(), next(g for g in m.groups() if g is not None))
            for m in _QUOTE_RE.finditer(text)
        ]

    def _free(self, start: int, end: int) -> bool:
        return all(end <= a or start >= b for a, b in self.used)

    def _search(self, pattern: str) -> re.Match[str] | None:
        for match in re.finditer(pattern, self.text, re.I):
            if self._free(match.start("v"), match.end("v")):
                return match
        return None

    @staticmethod
    def _stems(name: str) -> list[str]:
        parts = [p.lower() for p in _NAME_SPLIT_RE.split(name) if p]
        meaningful = [p for p in parts if len(p) > 1 and p not in _GENERIC_WORDS]
        return [re.escape(p[:-1] if len(p) > 3 and p.endswith("s") else p) for p in meaningful]

    def _adjacent_number(self, name: str) -> str | None:
        escaped = re.escape(name)
        patterns = [rf"\b{escaped}\b\s*(?:[:=]|is|of|to|as)?\s*(?P<v>{_NUMW})\b"]
        for stem in self._stems(name):
            patterns.append(rf"(?<![\w.])(?P<v>{_NUMW})\s*-?\s*{stem}\w*\b")
            patterns.append(rf"\b{stem}\w*\s*(?:[:=]|is|of|to|as|equals?)?\s*(?P<v>{_NUMW})\b")
        for pattern in patterns:
            match = self._search(pattern)
            if match:
                self.used.append((match.start("v"), match.end("v")))
                return match.group("v")
        return None

    def _free_number(self) -> str | None:
        for match in _FREE_NUMBER_RE.finditer(self.text):
            if self._free(match.start(), match.end()):
                self.used.append((match.start(), match.end()))
                return match.group()
        return None

    def _adjacent_string(self, name: str) -> str | None:
        quoted = r"(?:\"(?P<v1>[^\"\n]*)\"|'(?P<v2>[^'\n]*)'|\u201c(?P<v3>[^\u201d\n]*)\u201d)"
        escaped = re.escape(name)
        patterns = [
            rf"\b{escaped}\b\s*(?:[:=]|is|of|as)?\s*{quoted}",
            rf"\b{escaped}\b\s*[:=]\s*(?P<v4>[^\s,;'\"]+)",
        ]
        patterns += [rf"\b{stem}\w*\s*(?:[:=]|is|of|as)?\s*{quoted}" for stem in self._stems(name)]
        for pattern in patterns:
            for match in re.finditer(pattern, self.text, re.I):
                group = next(g for g in ("v1", "v2", "v3", "v4") if match.group(g) is not None)
                if self._free(match.start(group), match.end(group)):
                    self.used.append((match.start(group), match.end(group)))
                    return match.group(group)
        return None

    def _unused_quote(self) -> str | None:
        for start, end, value in self.quotes:
            if self._free(start, end):
                self.used.append((start, end))
                return value
        return None

    def fill_object(self, schema: dict[str, Any]) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        result: dict[str, Any] = {}
        for name, sub in properties.items():
            value = self.fill(name, sub if isinstance(sub, dict) else {}, name in required)
            if value is not _MISSING:
                result[name] = value
        for name in required:
            if name not in result:
                result[name] = name
        return result

    def fill(self, name: str, schema: dict[str, Any], required: bool) -> Any:
        for combinator in ("anyOf", "oneOf", "allOf"):
            options = schema.get(combinator)
            if isinstance(options, list) and options and isinstance(options[0], dict):
                schema = {**schema, **options[0]}
        if "const" in schema:
            return schema["const"] if required else _MISSING
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "string"
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            for value in enum:
                if isinstance(value, str) and re.search(rf"\b{re.escape(value)}\b", self.text, re.I):
                    return value
            return schema.get("default", enum[0]) if required else _MISSING
        if kind in ("integer", "number"):
            return self._fill_number(name, schema, kind, required)
        if kind == "string":
            value = self._adjacent_string(name)
            if value is None and required:
                value = self._unused_quote()
                if value is None:
                    default = schema.get("default")
                    value = default if isinstance(default, str) else name
            return _MISSING if value is None else value
        if kind == "boolean":
            match = re.search(rf"\b{re.escape(name)}\b\s*[:=]?\s*(true|false)\b", self.text, re.I)
            if match:
                return match.group(1).lower() == "true"
            return bool(schema.get("default", False)) if required else _MISSING
        if not required:
            return _MISSING
        if "default" in schema:
            return schema["default"]
        if kind == "array":
            items = schema.get("items")
            if not isinstance(items, dict):
                items = {}
            count = schema.get("minItems", 0) if isinstance(schema.get("minItems"), int) else 0
            return [self.fill(name, items, True) for _ in range(min(count, 8))]
        if kind == "object":
            return self.fill_object(schema)
        return None

    def _fill_number(self, name: str, schema: dict[str, Any], kind: str, required: bool) -> Any:
        token = self._adjacent_number(name)
        if token is None and not required:
            return _MISSING
        value: int | float
        if token is None:
            token = self._free_number()
        if token is not None:
            value = _parse_number(token)
        elif isinstance(schema.get("default"), int | float) and not isinstance(schema.get("default"), bool):
            value = schema["default"]
        else:
            value = _SMALL_NUMBER
        low, high = schema.get("minimum"), schema.get("maximum")
        if isinstance(low, int | float) and value < low:
            value = low
        if isinstance(high, int | float) and value > high:
            value = high
        return int(value) if kind == "integer" else value


_MISSING: Any = object()


@dataclass(slots=True)
class _Magic:
    error_type: str | None = None
    http_status: int | None = None
    tokens_per_second: float | None = None
    first_token_delay_s: float = 0.0
    cut: bool = False


def _read_magic(text: str) -> tuple[str, _Magic]:
    magic = _Magic()

    def take(match: re.Match[str]) -> str:
        kind, value = match.group(1), match.group(2)
        if kind is None:
            magic.cut = True
        elif kind.lower() == "error":
            value = value.lower()
            magic.error_type = value if value.endswith("_error") else value + "_error"
        elif kind.lower() == "http" and value.isdigit() and 400 <= int(value) <= 599:
            magic.http_status = int(value)
        elif kind.lower() == "ttft":
            try:
                magic.first_token_delay_s = min(60.0, max(0.0, float(value) / 1000))
            except ValueError:
                pass
        elif kind.lower() == "tps":
            try:
                magic.tokens_per_second = max(0.0, float(value))
            except ValueError:
                pass
        return " "

    return _MAGIC_RE.sub(take, text), magic


def _calls(request: MessagesRequest, text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Names of the tools to call, in order, and the spans of the text that were counts."""
    if request.tool_choice == "none" or not request.tools:
        return [], []
    mentioned: list[tuple[int, str]] = []
    for name in request.tools:
        match = re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text, re.I)
        if match:
            mentioned.append((match.start(), name))
    names = [name for _, name in sorted(mentioned)]
    if request.forced_tool is not None:
        names = [request.forced_tool]
    elif request.tool_choice == "any":
        names = names or [next(iter(request.tools))]
    elif not names or not _VERB_RE.search(text):
        return [], []
    reserved: list[tuple[int, int]] = []
    count = 1
    match = _COUNT_RE.search(text)
    if match:
        word = (match.group(1) or match.group(2)).lower()
        count = {"once": 1, "twice": 2, "thrice": 3}.get(word) or int(_parse_number(word))
        reserved.append(match.span())
    elif _PARALLEL_RE.search(text):
        count = 3
    count = max(1, min(count, MAX_CALLS))
    calls = [name for name in names for _ in range(count)]
    if request.disable_parallel:
        calls = calls[:1]
    return calls, reserved


def _call_phrase(calls: list[str]) -> str:
    distinct = list(dict.fromkeys(calls))
    if len(distinct) == 1:
        return distinct[0] if len(calls) == 1 else f"{distinct[0]} {len(calls)} times"
    return ", ".join(distinct[:-1]) + " and " + distinct[-1]


def _reply_quote(text: str) -> str | None:
    for match in _REPLY_RE.finditer(text):
        opener = match.group(1)
        closing = re.compile(rf"(.+?){_CLOSERS[opener]}(?=[\s.,!?;:)\]]|$)", re.S)
        found = closing.match(text, match.end())
        if found and found.group(1).strip():
            return found.group(1)
    return None


def _report(results: list[Block]) -> str:
    items: list[tuple[str, str]] = []
    for block in results:
        content = _snippet(_block_text(block)) or "nothing"
        if block.get("is_error"):
            items.append(("denied", "denied") if "denied" in content.lower() else ("error", content))
        else:
            items.append(("ok", content))
    if len(items) == 1:
        status, content = items[0]
        if status == "denied":
            return "The tool call was denied."
        if status == "error":
            return f"The tool returned an error: {content}."
        return f"The tool returned {content}."
    shown = [c if s == "ok" else ("denied" if s == "denied" else f"error ({c})") for s, c in items]
    return "Results: " + ", ".join(shown) + "."


def plan_reply(request: MessagesRequest, *, key: bytes, seed: bytes) -> Plan:
    """Decide the reply to a validated request. `seed` is a digest of the request's content."""
    user = next((t for t in reversed(request.turns) if t.role == "user"), None)
    blocks_in = user.blocks if user is not None else []
    # A turn holding tool results and then new text (the user spoke after a cancelled or
    # interrupted call): the new text is what to answer, as a real model would.
    last_result = max((i for i, b in enumerate(blocks_in) if b["type"] == "tool_result"), default=-1)
    trailing = [b for b in blocks_in[last_result + 1 :] if b["type"] == "text"]
    raw_text = "\n".join(b["text"] for b in (trailing or [b for b in blocks_in if b["type"] == "text"]))
    text, magic = _read_magic(raw_text)
    results = []
    if request.turns[-1].role == "user" and not (trailing and last_result >= 0):
        results = [b for b in blocks_in if b["type"] == "tool_result"]
    seed_int = int.from_bytes(seed[:4], "big")

    blocks: list[PlannedBlock] = []
    stop_reason = "end_turn"
    thought: str
    if results:
        reply: TokenSource = words(_report(results))
        thought = f"I have {len(results)} tool result(s) to report back to the user."
    else:
        calls, reserved = _calls(request, text)
        if calls:
            filler = _ArgFiller(text, reserved)
            stop_reason = "tool_use"
            phrase = _call_phrase(calls)
            if request.tool_choice == "auto":
                blocks.append(PlannedBlock("text", words(f"I'll call {phrase}.")))
            arguments: dict[str, dict[str, Any]] = {}
            for k, name in enumerate(calls):
                if name not in arguments:
                    schema = request.tools[name].get("input_schema") or {}
                    arguments[name] = filler.fill_object(schema)
                args = arguments[name]
                blocks.append(
                    PlannedBlock(
                        "tool_use",
                        fragments(json.dumps(args)),
                        tool_id=_ident("toolu_", seed, b"tool%d" % k),
                        name=name,
                        input=args,
                    )
                )
            shown = ", ".join(f"{n}({json.dumps(arguments[n])})" for n in dict.fromkeys(calls))
            thought = f"The user asked me to call {phrase}. I will call {shown}."
            reply = ()
        else:
            quote = _reply_quote(text)
            count_to = _COUNT_TO_RE.search(text)
            n_words = _N_WORDS_RE.search(text)
            if quote is not None:
                reply = words(quote)
                thought = "The user asked me to reply with a specific message, so I will say exactly that."
            elif count_to is not None:
                n = max(1, min(int(count_to.group(1)), MAX_GENERATED))
                reply = CountTokens(n)
                thought = f"The user wants me to count to {n}."
            elif n_words is not None or _LONG_RE.search(text):
                n = int(n_words.group(1)) if n_words is not None else LONG_DEFAULT
                reply = WordTokens(max(1, min(n, MAX_GENERATED)), seed_int)
                thought = f"The user wants a long answer of about {n} words."
            else:
                snippet = " ".join(text.replace("[redacted]", " ").split()[:12])
                if snippet:
                    template = _TEMPLATES[seed_int % len(_TEMPLATES)]
                    reply = words(template.format(snippet=_snippet(snippet, 120)))
                else:
                    reply = words("Hello! How can I help you today?")
                thought = f'The user said "{_snippet(snippet, 80)}". I will answer in a friendly way.'
    if reply:
        blocks.append(PlannedBlock("text", reply))
    if not blocks:
        blocks.append(PlannedBlock("text", words("Done.")))

    if request.thinking:
        if "[redacted]" in raw_text.lower():
            data = seal_redacted(thought.encode(), key)
            blocks.insert(0, PlannedBlock("redacted_thinking", (), data=data))
        else:
            blocks.insert(0, PlannedBlock("thinking", () if request.thinking_omitted else words(thought)))

    plan = Plan(
        message_id=_ident("msg_", seed, b"msg"),
        blocks=blocks,
        stop_reason=stop_reason,
        http_status=magic.http_status,
        tokens_per_second=magic.tokens_per_second,
        first_token_delay_s=magic.first_token_delay_s,
    )
    total = plan.total_tokens
    if request.max_tokens and total > request.max_tokens:
        plan.limit = request.max_tokens
    if magic.cut:
        plan.limit = _cut_point(blocks) if plan.limit is None else min(plan.limit, _cut_point(blocks))
    if magic.error_type is not None:
        plan.error_type = magic.error_type
        plan.error_after = min(3, total)
    return plan


def _cut_point(blocks: list[PlannedBlock]) -> int:
    """Half-way through the first tool call's arguments, else through the last text block
    (a block of one token is cut before it starts); always before the end of the reply."""
    targets = [b for b in blocks if b.kind == "tool_use"][:1] or [b for b in blocks if b.kind == "text"][-1:]
    before = 0
    for block in blocks:
        if targets and block is targets[0]:
            return before + len(block.tokens) // 2
        before += len(block.tokens)
    return max(0, before - 1)


def error_status(error_type: str) -> int:
    """The HTTP status a non-streaming request fails with for an injected error type."""
    for status in (529, 500, 429, 413, 408, 404, 403, 401, 400):
        if error_type_for(status) == error_type:
            return status
    return 500


def joined(tokens: TokenSource, limit: int | None = None) -> str:
    """The text of the first `limit` tokens (all when None)."""
    return "".join(tokens if limit is None else islice(tokens, limit))
