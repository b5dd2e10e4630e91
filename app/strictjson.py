"""Strict JSON for request bodies: RFC 8259 text that every later step can store and read back.

`loads` refuses, with an `InvalidJson` whose message says what is wrong:

- bytes that are not UTF-8 (a surrogate encoded in UTF-8 included);
- text that is not JSON;
- nesting deeper than `max_depth` arrays and objects, however deep (no RecursionError:
  the parser's own recursion is caught, and the depth of what parsed is measured on
  the text, without recursion);
- `NaN`, `Infinity`, `-Infinity`, and numbers a double cannot hold (`1e400`, a
  400-digit integer): Python would take them, but they are not JSON, or not JSON
  that other parsers read back as the same number;
- an object with the same key twice;
- a `\\u` escape that leaves a lone surrogate, which no UTF-8 text can carry.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any

from postback.errors import Malformed

# Digits of the largest double (1.797…e308): an integer with more cannot be one.
_MAX_DOUBLE_DIGITS = len(str(int(1.7976931348623157e308)))
# Without 200 digits in a row or a 3-digit exponent no number reaches 1e300, so nearly every
# body is parsed without a Python call per number. Digits become 0, E e and - +, to look.
_NUMBER_SHAPE = bytes.maketrans(b"123456789E-", b"000000000e+")
_BIG_NUMBER_SIGNS = (b"0" * 200, b"e000", b"e+000")
_STRUCTURE = b'"[]{}'
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in _STRUCTURE)
# An opening bracket counts +1, a closing one -1 (0xff as a signed byte).
_SIGNS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")
# A \u escape of a surrogate (after an escaped backslash, a false alarm costs one check).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class InvalidJson(Malformed):
    """The text is not strict JSON of the accepted shape; the message says why."""


def loads(raw: bytes, *, max_depth: int) -> Any:
    """The value of the JSON text `raw`, or InvalidJson."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson(f"the body is not UTF-8 (byte {exc.start})") from None
    shape = raw.translate(_NUMBER_SHAPE)
    big = any(sign in shape for sign in _BIG_NUMBER_SIGNS)
    try:
        value = (_CHECKING_NUMBERS if big else _DECODER).decode(text)
    except RecursionError:
        raise InvalidJson(f"JSON nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"the body is not valid JSON: {exc}") from None
    # Fewer brackets than the limit cannot nest beyond it: most bodies skip the measure.
    if raw.count(b"[") + raw.count(b"{") > max_depth and depth(raw) > max_depth:
        raise InvalidJson(f"JSON nested deeper than {max_depth} levels")
    if _SURROGATE_ESCAPE.search(raw):
        _refuse_surrogates(value)
    return value


def depth(raw: bytes) -> int:
    """How deeply the arrays and objects of the valid JSON text `raw` nest (0 for a scalar).

    Every step is a loop in C: escaped backslashes and quotes out, so that each quote
    left opens or closes a string; then only quotes and brackets; then what lies
    between strings; then the deepest running count of brackets.
    """
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = raw.translate(None, _NOT_STRUCTURE)
    outside = b"".join(skeleton.split(b'"')[::2]) if b'"' in skeleton else skeleton
    signs = outside.translate(_SIGNS)
    return max(itertools.accumulate(memoryview(signs).cast("b")), default=0)


def _refuse_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not JSON")


def _integer(digits: str) -> int:
    # Checked before int(), which would spend time on (or refuse) thousands of digits.
    if len(digits.lstrip("-")) > _MAX_DOUBLE_DIGITS:
        raise _out_of_range(digits)
    value = int(digits)
    try:
        float(value)
    except OverflowError:
        raise _out_of_range(digits) from None
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _out_of_range(text)
    return value


def _out_of_range(text: str) -> InvalidJson:
    shown = text if len(text) <= 24 else text[:24] + "…"
    return InvalidJson(f"number out of range (a double holds at most ±1.8e308): {shown}")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidJson(f"duplicate key {json.dumps(key)[:100]}")
            seen.add(key)
    return obj


def _refuse_surrogates(value: Any) -> None:
    # The depth is bounded by now; ensure_ascii=False leaves each lone surrogate as it is.
    found = _SURROGATE.search(json.dumps(value, ensure_ascii=False))
    if found is not None:
        escape = f"\\u{ord(found.group()):04x}"
        raise InvalidJson(f"invalid Unicode: lone surrogate {escape} (half of a UTF-16 pair)")


# Made once (a decoder is stateless between calls): the second also checks every number.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_object)
_CHECKING_NUMBERS = json.JSONDecoder(
    parse_constant=_refuse_constant,
    object_pairs_hook=_object,
    parse_int=_integer,
    parse_float=_float,
)
