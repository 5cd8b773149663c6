"""Register codec: 16-bit Modbus registers <-> a point's value in its device unit (type, word order, scale,
offset, SunSpec scale factors and not-implemented sentinels). Pure functions, shared by drivers and simulators.
"""

from __future__ import annotations

import math
import struct

from drivers.profile import WORDS, Point

# Raw range of each integer type.
_RANGE: dict[str, tuple[int, int]] = {
    "u16": (0, 0xFFFF),
    "i16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFFFFFF),
    "i32": (-0x80000000, 0x7FFFFFFF),
    "u64": (0, 0xFFFFFFFFFFFFFFFF),
    "i64": (-0x8000000000000000, 0x7FFFFFFFFFFFFFFF),
}
_SIGNED = {"i16", "i32", "i64"}
_F32_MAX = 3.4028234663852886e38

# What a SunSpec device reports for a point it does not implement, as the unsigned register value.
SUNSPEC_NOT_IMPLEMENTED: dict[str, int] = {
    "u16": 0xFFFF,
    "i16": 0x8000,
    "u32": 0xFFFFFFFF,
    "i32": 0x80000000,
    "u64": 0xFFFFFFFFFFFFFFFF,
    "i64": 0x8000000000000000,
}


def _scale_of(point: Point, sf: int | None) -> float | None:
    """The multiplier raw -> device unit; None when the point scales by a scale factor that is unknown."""
    if isinstance(point.scale, str):
        return None if sf is None else 10.0**sf
    return point.scale


def _pow10_exponent(scale: float) -> int | None:
    """k when scale == 10**k exactly (as a float literal would be written), else None."""
    if scale <= 0:
        return None
    k = round(math.log10(scale))
    return k if -12 <= k <= 12 and scale == 10.0**k else None


def apply_scale(raw: int | float, scale: float) -> float:
    """raw * scale, correctly rounded for decimal scales: raw / 100 is exact where raw * 0.01 is not
    (1234 * 0.01 = 12.340000000000002). Also turns W into MW (factor 1e-6) without float dust, and a point of
    `sign: -1` negates exactly."""
    if scale < 0:
        return -apply_scale(raw, -scale) + 0.0  # + 0.0: no -0.0 for a zero reading
    k = _pow10_exponent(scale)
    if k is not None and k < 0:
        return raw / 10**-k
    return raw * scale


_apply_scale = apply_scale


def resolution(point: Point, sf: int | None = None) -> float:
    """One LSB of the point in its device unit (0 for floats and strings): what a read-back may differ by."""
    if point.type in ("f32", "string"):
        return 0.0
    scale = _scale_of(point, sf)
    return abs(scale) if scale is not None else 0.0


def words_to_int(regs: list[int], word_order: str) -> int:
    """A point's registers as one unsigned integer (the first register is the high word in big word order)."""
    words = regs if word_order == "big" else list(reversed(regs))
    raw = 0
    for w in words:
        raw = (raw << 16) | (w & 0xFFFF)
    return raw


def int_to_words(raw: int, n: int, word_order: str) -> list[int]:
    """The inverse of words_to_int: an unsigned integer as `n` registers."""
    words = [(raw >> (16 * (n - 1 - i))) & 0xFFFF for i in range(n)]
    return words if word_order == "big" else list(reversed(words))


_words_to_int = words_to_int
_int_to_words = int_to_words


def decode(
    point: Point, regs: list[int], word_order: str, sf: int | None = None, sunspec: bool = False
) -> float | int | str | None:
    """Registers -> the point's value in its device unit: raw * scale + offset.

    `sf` is the integer value of the point's scale-factor point when `scale` names one (value * 10**sf).
    With `sunspec`, the not-implemented sentinels (and a missing scale factor) decode to None.
    Integer types with scale 1 and offset 0 come back as int.
    """
    t = point.type
    n = point.count
    if len(regs) != n:
        raise ValueError(f"{point.description or point.sunspec or 'point'}: expected {n} registers, got {len(regs)}")
    if t == "string":
        data = b"".join(struct.pack(">H", r & 0xFFFF) for r in regs)
        return data.decode("ascii", errors="replace").strip("\x00 ").rstrip("\x00")
    if t == "f32":
        raw_u = _words_to_int(regs, word_order)
        value = struct.unpack(">f", struct.pack(">I", raw_u))[0]
        if sunspec and math.isnan(value):
            return None
    else:
        raw_u = _words_to_int(regs, word_order)
        if sunspec and raw_u == SUNSPEC_NOT_IMPLEMENTED[t]:
            return None
        bits = 16 * WORDS[t]
        value = raw_u - (1 << bits) if t in _SIGNED and raw_u >> (bits - 1) else raw_u
    scale = _scale_of(point, sf)
    if scale is None:
        if sunspec:
            return None
        raise ValueError(f"point scaled by {point.scale!r}: its scale factor value was not given")
    if t != "f32" and scale == 1 and point.offset == 0 and isinstance(value, int):
        return value
    return _apply_scale(value, scale) + point.offset


def encode(
    point: Point, value: float | int | str, word_order: str, sf: int | None = None, name: str | None = None
) -> list[int]:
    """A value in the point's device unit -> registers (rounded to the nearest raw integer).

    Raises ValueError naming the point when the value does not fit the type.
    """
    label = name or point.sunspec or point.description or "point"
    t = point.type
    n = point.count
    if t == "string":
        if not isinstance(value, str):
            raise ValueError(f"{label}: a string point needs a str, got {value!r}")
        try:
            data = value.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"{label}: {value!r} is not ASCII") from None
        if len(data) > 2 * n:
            raise ValueError(f"{label}: {value!r} is longer than {2 * n} characters")
        data = data.ljust(2 * n, b"\x00")
        return [int.from_bytes(data[2 * i : 2 * i + 2], "big") for i in range(n)]
    if isinstance(value, str) or isinstance(value, bool):
        raise ValueError(f"{label}: a {t} point needs a number, got {value!r}")
    scale = _scale_of(point, sf)
    if scale is None:
        raise ValueError(f"{label}: scaled by {point.scale!r}, whose scale factor value was not given")
    if scale == 0:
        raise ValueError(f"{label}: scale is 0")
    k = _pow10_exponent(scale)
    shifted = value - point.offset
    raw_f = shifted * 10**-k if k is not None and k < 0 else shifted / scale
    if t == "f32":
        if math.isfinite(raw_f) and abs(raw_f) > _F32_MAX:
            raise ValueError(f"{label}: {value!r} is outside the float32 range")
        return _int_to_words(struct.unpack(">I", struct.pack(">f", raw_f))[0], n, word_order)
    if not math.isfinite(raw_f):
        raise ValueError(f"{label}: {value!r} is not a finite number")
    # ints pass through exactly: a float round trip would lose the low bits of a 64-bit value
    raw = value if isinstance(value, int) and scale == 1 and point.offset == 0 else int(round(raw_f))
    lo, hi = _RANGE[t]
    if not lo <= raw <= hi:
        raise ValueError(
            f"{label}: {value!r} is outside the range of {t} "
            f"({_apply_scale(lo, scale) + point.offset} .. {_apply_scale(hi, scale) + point.offset})"
        )
    return _int_to_words(raw & ((1 << (16 * n)) - 1), n, word_order)
