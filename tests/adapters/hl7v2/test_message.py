"""Framing, charset and parse tree of HL7 v2 units (ehr-mapping.md §4.1)."""

from __future__ import annotations

import pytest

from stream_app.adapters.hl7v2 import adapt, split_messages
from stream_app.adapters.hl7v2.message import (
    Delimiters,
    EncodingRefused,
    MessageRefused,
    decode_escapes,
    parse_message,
)
from stream_app.adapters.site import SiteConfig
from stream_app.vocabulary import HL7_INVALID, INVALID_ENCODING
from tests.adapters.hl7v2.helpers import EXAMPLES

VISIT = (EXAMPLES / "office-visit.hl7").read_bytes()
MESSAGES = [line.rstrip(b"\r\n") + b"\r" for line in VISIT.split(b"\n") if line.strip()]
DEFAULT = Delimiters("|", "^", "~", "\\", "&")


def _types(units) -> list[bytes]:
    return [u.text.split(b"|")[8] for u in units]


def test_the_example_file_holds_four_messages():
    units = split_messages(VISIT)
    assert _types(units) == [b"ADT^A04^ADT_A01", b"DFT^P03^DFT_P03", b"RDS^O13^RDS_O13",
                             b"RAS^O17^RAS_O17"]
    assert not any(u.orphan for u in units)
    # Each message's raw is its own slice of the input.
    assert units[0].raw == MESSAGES[0].rstrip(b"\r")


@pytest.mark.parametrize("separator", [b"\r", b"\n", b"\r\n"])
def test_segment_separators_are_equivalent(separator):
    data = b"".join(m.replace(b"\r", separator) for m in MESSAGES)
    assert [u.text for u in split_messages(data)] == [m for m in MESSAGES]


def test_mllp_frames_are_messages():
    framed = b"".join(b"\x0b" + m + b"\x1c\r" for m in MESSAGES)
    units = split_messages(framed)
    assert [u.text for u in units] == MESSAGES
    # One MLLP frame on a Kafka record: raw is the record as received, framing bytes included.
    one = b"\x0b" + MESSAGES[2] + b"\x1c\r"
    units = split_messages(one)
    assert len(units) == 1 and units[0].raw == one and units[0].text == MESSAGES[2]


def test_batch_envelopes_are_skipped():
    batch = (b"FHS|^~\\&|EHR|MAINCLINIC\rBHS|^~\\&|EHR|MAINCLINIC\r" + b"".join(MESSAGES)
             + b"BTS|4\rFTS|1\r")
    assert [u.text for u in split_messages(batch)] == MESSAGES


def test_segments_before_any_msh_are_an_orphan_dead_letter():
    out = adapt(b"PID|1||P1^^^F^MR\r" + MESSAGES[2], SiteConfig.packaged())
    assert len(out.records) == 1
    assert [(d.error_code, d.raw) for d in out.dead_letters] == [(HL7_INVALID, b"PID|1||P1^^^F^MR")]


@pytest.mark.parametrize("data", [b"", b"\r\n\r\n", b"\x0b\x1c\r", b"hello"])
def test_nothing_usable_is_one_dead_letter(data):
    out = adapt(data, SiteConfig.packaged())
    assert out.records == []
    assert [d.error_code for d in out.dead_letters] == [HL7_INVALID]
    assert out.dead_letters[0].raw == data


def test_escape_sequences_decode_to_the_message_delimiters():
    assert decode_escapes(r"A\F\B\S\C\T\D\R\E\E\F", DEFAULT, "utf-8") == "A|B^C&D~E\\F"
    assert decode_escapes(r"line\.br\two", DEFAULT, "utf-8") == "line\ntwo"
    assert decode_escapes(r"\H\bold\N\ text", DEFAULT, "utf-8") == "bold text"
    assert decode_escapes("caf\\XC3A9\\", DEFAULT, "utf-8") == "café"
    assert decode_escapes("caf\\XE9\\", DEFAULT, "latin-1") == "café"
    # Other sequences are kept as written; a lone escape character too.
    assert decode_escapes(r"x\Zabc\y", DEFAULT, "utf-8") == r"x\Zabc\y"
    assert decode_escapes("back\\slash", DEFAULT, "utf-8") == "back\\slash"


def test_non_default_msh2_delimiters():
    text = (b"MSH#$*!%#EHR#FAC#B#C#20250314085500##ADT$A04#1#P#2.5.1\r"
            b"PID#1##P1$$$F$MR*P2$$$F$SS##A!F!B!S!C!T!D!R!E!E\r"
            b"PV1#1#O#FM$$$FAC####1234$Doe$J$$$$$$NPI%2.16.840.1.113883.4.6%ISO\r")
    msg = parse_message(text)
    assert msg.delimiters == Delimiters("#", "$", "*", "!", "%")
    pid, pv1 = msg.first("PID"), msg.first("PV1")
    assert pid.value(5) == "A#B$C%D*E!E"
    assert pid.repetitions(3) == 2 and pid.value(3, 2, 1) == "P2" and pid.value(3, 2, 5) == "SS"
    assert pv1.value(7, 1, 9, 2) == "2.16.840.1.113883.4.6"
    assert pv1.value(3, 1, 4) == "FAC"


def test_explicit_null_and_missing_positions_are_absent():
    msg = parse_message(b'MSH|^~\\&|A|B|C|D|20250101||ADT^A04|1|P|2.5.1\rPID|1||""|x\r')
    pid = msg.first("PID")
    assert pid.value(3) is None
    assert pid.value(4) == "x"
    assert pid.value(99) is None and pid.value(4, 2) is None and pid.value(4, 1, 7) is None


@pytest.mark.parametrize("msh18, codec", [
    (b"", "utf-8"), (b"UNICODE UTF-8", "utf-8"), (b"8859/1", "latin-1"), (b"ASCII", "ascii")])
def test_msh18_charsets(msh18, codec):
    name = "Muller" if codec == "ascii" else "Müller"
    msg = parse_message(b"MSH|^~\\&|A|B|C|D|20250101||ADT^A04|1|P|2.5.1||||||" + msh18
                        + b"\rPID|1||" + name.encode(codec) + b"\r")
    assert msg.first("PID").value(3) == name
    assert msg.warnings == []


def test_unknown_charset_is_read_as_latin1_with_a_warning():
    msg = parse_message(b"MSH|^~\\&|A|B|C|D|20250101||ADT^A04|1|P|2.5.1||||||8859/15\rPID|1||M\xfcller\r")
    assert msg.first("PID").value(3) == "Müller"
    assert msg.warnings == ["charset_unsupported:8859/15"]


@pytest.mark.parametrize("data", [
    b"MSH|^~\\&|A|B|C|D|20250101||ADT^A04|1|P|2.5.1||||||UNICODE UTF-16\r",
    b"MSH|^~\\&|A|B|C|D|20250101||ADT^A04|1|P|2.5.1\rPID|1||M\xfcller\r",   # not UTF-8
])
def test_refused_encodings(data):
    with pytest.raises(EncodingRefused):
        parse_message(data)
    out = adapt(data, SiteConfig.packaged())
    assert [d.error_code for d in out.dead_letters] == [INVALID_ENCODING]


@pytest.mark.parametrize("data", [
    b"MSH|^~|A\r",                      # too few encoding characters
    b"MSH|^^\\&|A|B\r",                 # repeated delimiter
    b"MSH|^~\\&|A\rpid|1\r",            # unparsable segment name
])
def test_unusable_messages(data):
    with pytest.raises(MessageRefused):
        parse_message(data)
    out = adapt(data, SiteConfig.packaged())
    assert [d.error_code for d in out.dead_letters] == [HL7_INVALID]
    assert out.dead_letters[0].field is not None


def test_v27_truncation_character_is_not_a_delimiter():
    msg = parse_message(b"MSH|^~\\&#|A|B|C|D|20250101||ADT^A04|1|P|2.7\rPID|1||P#1^^^F^MR\r")
    assert msg.delimiters == DEFAULT
    assert msg.first("PID").value(3) == "P#1"
    assert msg.first("MSH").value(9, 1, 2) == "A04"


@pytest.mark.parametrize("data, expected", [
    (b"MSH|^~\\&|", True), (b"\r\n  FHS|^~\\&", True), (b"BHS|", True), (b"\x0bMSH|", True),
    (b"\xef\xbb\xbfMSH|", True), (b'{"event_type":', False), (b"PID|1", False), (b"", False),
])
def test_content_detection(data, expected):
    from stream_app.adapters.hl7v2 import looks_like_hl7
    assert looks_like_hl7(data) is expected


def test_only_the_kept_segments_are_parsed_but_every_name_is_checked():
    text = MESSAGES[0] + b"NK1|1|DOE^JANE\rZX1|anything\r"
    assert [s.name for s in parse_message(text, keep=frozenset({"MSH"})).segments] == ["MSH"]
    assert [s.name for s in parse_message(text).segments] == ["MSH", "EVN", "PID", "PV1", "IN1"]
    with pytest.raises(MessageRefused):
        parse_message(text + b"nk2|x\r", keep=frozenset({"MSH"}))
