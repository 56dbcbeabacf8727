"""HL7 v2 framing, character set and parse tree (ehr-mapping.md §4.1).

* `split_messages` turns bytes (a Kafka record, an `.hl7` file, MLLP frames, FHS/BHS
  batches; segments ended by `\\r`, `\\n` or `\\r\\n`) into one unit per message.
* `parse_message` decodes one unit in the charset of its MSH-18 and parses it with
  python-hl7 (`hl7`, see docs/hl7v2.md for the choice), which honours MSH-1/MSH-2.
* `Segment.value(...)` reads a leaf by field, repetition, component and sub-component and
  decodes its escape sequences. python-hl7's own `unescape` is not used: it writes the
  field's text to its log on an unknown sequence (PHI), drops such sequences where the
  mapping keeps them, reads `\\Xhh\\` one character per byte whatever the charset, and
  turns `\\.br\\` into a carriage return.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import hl7

MLLP_START = b"\x0b"
MLLP_END = b"\x1c"
# Batch envelope segments (v2.5.1 §2.10.3): skipped, each message inside is a unit.
ENVELOPE_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

# MSH-18 (table 0211) → Python codec; absent or empty → UTF-8. UTF-16 is refused.
CHARSETS = {"": "utf-8", "UNICODE UTF-8": "utf-8", "8859/1": "latin-1", "ASCII": "ascii"}
REFUSED_CHARSETS = ("UNICODE", "UNICODE UTF-16", "UNICODE UTF-32")
FALLBACK_CHARSET = "latin-1"

_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")
# Every segment mapping.py reads (its SEGMENTS_READ names those of each message family).
MAPPED_SEGMENTS = frozenset({"MSH", "EVN", "PID", "PV1", "IN1", "ORC", "RXA", "RXR", "RXD",
                             "FT1", "OBX", "DG1", "PRT"})


class EncodingRefused(ValueError):
    """The unit's charset is not one the mapping reads (INVALID_ENCODING)."""


class MessageRefused(ValueError):
    """The unit is not a usable HL7 v2 message (HL7_INVALID); `field` names the place."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Unit:
    """One input unit cut from the bytes: a message (starts with MSH) or bytes that are not
    part of any message (`orphan`: segments before the first MSH of a frame).

    `raw` is the original bytes (all of them when the input holds one message, else the
    message's own slice); `text` the segments joined by `\\r`, ready to decode and parse.
    """

    raw: bytes
    text: bytes
    orphan: bool = False


# A segment ends at CR, LF or CRLF; an MLLP start or end byte also ends it and closes the
# message (several frames are several messages, a message never spans frames).
_SEGMENT = re.compile(rb"([^\r\n\x0b\x1c]*)(\r\n|\r|\n|[\x0b\x1c]|$)")


def split_messages(data: bytes) -> list[Unit]:
    """Every message in `data`, in order; envelope segments and blank lines dropped.

    Segments before the first MSH of a frame (and that are not envelope segments) come
    back as one orphan unit, so that nothing is dropped silently.
    """
    units: list[Unit] = []
    current: list[tuple[int, int, bytes]] = []
    orphan: list[tuple[int, int, bytes]] = []

    def close(parts: list[tuple[int, int, bytes]], is_orphan: bool) -> None:
        if parts:
            units.append(Unit(raw=data[parts[0][0]:parts[-1][1]],
                              text=b"\r".join(p[2] for p in parts) + b"\r", orphan=is_orphan))

    pos = 0
    size = len(data)
    while pos <= size:
        m = _SEGMENT.match(data, pos)
        segment, ender = m.group(1), m.group(2)
        seg_start = pos
        pos = m.end() if m.end() > pos else size + 1
        if seg_start == 0 and segment.startswith(UTF8_BOM):
            segment = segment[len(UTF8_BOM):]
        if segment.strip():
            head = segment[:3]
            if head in ENVELOPE_SEGMENTS:
                pass
            elif head == b"MSH":
                close(orphan, True)
                orphan = []
                close(current, False)
                current = [(seg_start, m.end(1), segment)]
            elif current:
                current.append((seg_start, m.end(1), segment))
            else:
                orphan.append((seg_start, m.end(1), segment))
        if ender in (MLLP_START, MLLP_END) or not ender:
            close(orphan, True)
            close(current, False)
            orphan, current = [], []
    if len(units) == 1:
        units[0] = Unit(raw=data, text=units[0].text, orphan=units[0].orphan)
    return units


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str


def _msh18(first_segment: bytes) -> str:
    """MSH-18 read as ASCII before the charset is known (§4.1)."""
    text = first_segment.decode("ascii", errors="replace")
    if len(text) < 4:
        return ""
    parts = text.split(text[3])
    # parts[0] is "MSH", parts[1] is MSH-2, so MSH-n is parts[n - 1].
    if len(parts) < 18:
        return ""
    value = parts[17]
    enc = parts[1]
    for sep in enc[:1] + enc[1:2]:  # first repetition / first component only
        value = value.split(sep)[0] if sep else value
    return value.strip().upper()


def charset_of(unit: bytes) -> tuple[str, list[str]]:
    """The codec to decode the unit with, and warnings. Raises EncodingRefused."""
    if unit.startswith(UTF16_BOMS):
        raise EncodingRefused("UTF-16 byte-order mark")
    declared = _msh18(unit.split(b"\r", 1)[0])
    if declared in CHARSETS:
        return CHARSETS[declared], []
    if declared in REFUSED_CHARSETS:
        raise EncodingRefused(f"MSH-18 character set {declared} is not read")
    return FALLBACK_CHARSET, [f"charset_unsupported:{declared[:40]}"]


class Segment:
    """One segment: `value(f, r, c, s)` reads a decoded leaf (None when empty or `""`)."""

    __slots__ = ("name", "ordinal", "position", "_fields", "_delims", "_codec", "_cache")

    def __init__(self, name: str, ordinal: int, position: int, fields, delims: Delimiters,
                 codec: str):
        self.name = name
        self.ordinal = ordinal      # 1-based among the message's segments of this name
        self.position = position    # 0-based index in the message
        self._fields = fields       # python-hl7 Segment
        self._delims = delims
        self._codec = codec
        self._cache: dict[int, list[list[list[str]]]] = {}

    def where(self, field_no: int, component: int | None = None) -> str:
        """The HL7 position for dead letters and warnings, e.g. `RXA[1]-5.1`."""
        at = f"{self.name}[{self.ordinal}]-{field_no}"
        return at if component is None else f"{at}.{component}"

    def _tree(self, field_no: int) -> list[list[list[str]]]:
        """The field as repetitions → components → sub-components (raw, not decoded).

        python-hl7 stops splitting at the first level whose text holds no further
        delimiter, so a field is a list of strings or of Repetitions, and so on down.
        """
        tree = self._cache.get(field_no)
        if tree is not None:
            return tree
        if field_no < 1 or field_no >= len(self._fields):
            tree = []
        elif self.name == "MSH" and field_no in (1, 2):
            tree = [[[str(self._fields[field_no][0])]]]
        else:
            tree = []
            for rep in self._fields[field_no]:
                if isinstance(rep, str):
                    tree.append([[rep]])
                    continue
                comps = []
                for comp in rep:
                    comps.append([comp] if isinstance(comp, str) else [str(s) for s in comp])
                tree.append(comps)
        self._cache[field_no] = tree
        return tree

    def repetitions(self, field_no: int) -> int:
        return len(self._tree(field_no))

    def value(self, field_no: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str | None:
        tree = self._tree(field_no)
        try:
            raw = tree[rep - 1][comp - 1][sub - 1]
        except IndexError:
            return None
        if raw == "" or raw == '""':
            return None
        if self.name == "MSH" and field_no in (1, 2):
            return raw
        text = decode_escapes(raw, self._delims, self._codec)
        return text if text.strip() else None


@dataclass(slots=True)
class Message:
    raw: bytes
    delimiters: Delimiters
    segments: list[Segment]
    warnings: list[str] = field(default_factory=list)

    def first(self, name: str) -> Segment | None:
        for seg in self.segments:
            if seg.name == name:
                return seg
        return None

    def all(self, name: str) -> list[Segment]:
        return [seg for seg in self.segments if seg.name == name]

    def following(self, seg: Segment, names: tuple[str, ...], stop: tuple[str, ...]) -> list[Segment]:
        """Segments named in `names` after `seg`, up to the next segment named in `stop`."""
        out = []
        for nxt in self.segments[seg.position + 1:]:
            if nxt.name in stop:
                break
            if nxt.name in names:
                out.append(nxt)
        return out

    def preceding(self, seg: Segment, name: str, stop: tuple[str, ...] = ()) -> Segment | None:
        """The nearest segment `name` before `seg`, not looking past a segment in `stop`."""
        for prev in reversed(self.segments[:seg.position]):
            if prev.name == name:
                return prev
            if prev.name in stop:
                return None
        return None


def parse_message(unit: bytes, keep: frozenset[str] = MAPPED_SEGMENTS) -> Message:
    """Decode and parse one message. Raises EncodingRefused or MessageRefused.

    Every segment's name is checked, but only the segments named in `keep` are handed to
    the parser and appear in the Message: building python-hl7's tree is most of the
    adapter's cost, and densely filled real-world messages carry many segments (NK1, GT1,
    AL1, Z-segments...) the mapping never reads.
    """
    codec, warnings = charset_of(unit)
    try:
        text = unit.decode(codec)
    except UnicodeDecodeError as exc:
        raise EncodingRefused(f"bytes not decodable as {codec} at offset {exc.start}") from None
    if len(text) < 8 or not text.startswith("MSH"):
        raise MessageRefused("no MSH segment", "MSH")
    sep = text[3]
    end = text.find(sep, 4)
    encoding_chars = text[4:end] if end > 0 else ""
    # MSH-2 needs component, repetition, escape and sub-component characters, all distinct
    # and none of them the field separator or a segment end (v2.7's truncation char ignored).
    if (len(encoding_chars) < 4 or len(set(encoding_chars[:4] + sep)) != 5
            or any(ch in "\r\n" or ch.isalnum() or ch.isspace() for ch in encoding_chars[:4] + sep)):
        raise MessageRefused("unusable MSH-1/MSH-2 delimiters", "MSH-2")
    delims = Delimiters(field=sep, component=encoding_chars[0], repetition=encoding_chars[1],
                        escape=encoding_chars[2], subcomponent=encoding_chars[3])
    kept = []
    for number, line in enumerate(text.rstrip("\r").split("\r"), start=1):
        name = line[:3]
        if not _SEGMENT_NAME.fullmatch(name) or (len(line) > 3 and line[3] != sep):
            raise MessageRefused("unparsable segment", f"segment {number}")
        if name in keep:
            kept.append(line)
    # python-hl7 reads MSH-2 in its v2.5 order (component, repetition, escape, sub-component);
    # a 5th (v2.7 truncation) character is passed on but never used as a delimiter there.
    tree = hl7.parse("\r".join(kept))
    segments: list[Segment] = []
    counts: dict[str, int] = {}
    for position, seg in enumerate(tree):
        head = seg[0]
        name = head if isinstance(head, str) else str(head[0])
        counts[name] = counts.get(name, 0) + 1
        segments.append(Segment(name, counts[name], position, seg, delims, codec))
    return Message(raw=unit, delimiters=delims, segments=segments, warnings=warnings)


def decode_escapes(raw: str, delims: Delimiters, codec: str) -> str:
    """v2.5.1 §2.7 escape sequences of one leaf (ehr-mapping §4.1): `\\F\\ \\S\\ \\T\\ \\R\\
    \\E\\` → the message's delimiters, `\\Xhh…\\` → bytes in the message charset,
    `\\.br\\` → newline, `\\H\\ \\N\\` dropped, any other sequence kept as written."""
    esc = delims.escape
    if esc not in raw:
        return raw
    named = {"F": delims.field, "S": delims.component, "T": delims.subcomponent,
             "R": delims.repetition, "E": esc, ".br": "\n", "H": "", "N": ""}
    out: list[str] = []
    i = 0
    n = len(raw)
    while i < n:
        ch = raw[i]
        if ch != esc:
            j = raw.find(esc, i)
            j = n if j < 0 else j
            out.append(raw[i:j])
            i = j
            continue
        end = raw.find(esc, i + 1)
        if end < 0:                      # a lone escape character: kept as written
            out.append(raw[i:])
            break
        body = raw[i + 1:end]
        if body in named:
            out.append(named[body])
        elif len(body) > 1 and body[0] == "X" and len(body) % 2 == 1 and _is_hex(body[1:]):
            out.append(bytes.fromhex(body[1:]).decode(codec, errors="replace"))
        else:
            out.append(raw[i:end + 1])
        i = end + 1
    return "".join(out)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)
