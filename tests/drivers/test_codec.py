"""Register codec: known vectors for every type and word order, and hypothesis round trips."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.codec import apply_scale, decode, encode, resolution
from drivers.profile import Point

RANGES = {
    "u16": (0, 2**16 - 1),
    "i16": (-(2**15), 2**15 - 1),
    "u32": (0, 2**32 - 1),
    "i32": (-(2**31), 2**31 - 1),
    "u64": (0, 2**64 - 1),
    "i64": (-(2**63), 2**63 - 1),
}
WORD_ORDERS = ("big", "little")


def pt(type_: str, **kw) -> Point:
    return Point(address=0, type=type_, **kw)


# --- known vectors (written out by hand, not produced by encode) -------------------------------------------


@pytest.mark.parametrize(
    "type_, regs_big, value",
    [
        ("u16", [0x1234], 0x1234),
        ("i16", [0xFFFE], -2),
        ("u32", [0x0001, 0x0002], 0x00010002),
        ("i32", [0xFFFF, 0xFF85], -123),
        ("u64", [0x0001, 0x0002, 0x0003, 0x0004], 0x0001000200030004),
        ("i64", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], -1),
        ("f32", [0x3FC0, 0x0000], 1.5),
        ("f32", [0xC2F6, 0xE979], struct.unpack(">f", bytes.fromhex("c2f6e979"))[0]),
    ],
)
@pytest.mark.parametrize("word_order", WORD_ORDERS)
def test_known_vectors(type_, regs_big, value, word_order):
    regs = regs_big if word_order == "big" else list(reversed(regs_big))
    p = pt(type_)
    assert decode(p, regs, word_order) == value
    assert encode(p, value, word_order) == regs


def test_string_vector_strips_nuls_and_spaces():
    p = pt("string", words=4)
    assert decode(p, [0x4142, 0x4320, 0x0000, 0x0000], "big") == "ABC"
    assert encode(p, "ABC", "big") == [0x4142, 0x4300, 0, 0]
    assert decode(p, [0, 0, 0, 0], "big") == ""


@pytest.mark.parametrize(
    "scale, offset, regs, value",
    [
        (0.1, 0.0, [1234], 123.4),
        (0.01, 0.0, [5555], 55.55),
        (10.0, 0.0, [7], 70.0),
        (0.5, -20.0, [100], 30.0),
    ],
)
def test_constant_scale_and_offset(scale, offset, regs, value):
    p = pt("u16", scale=scale, offset=offset)
    assert decode(p, regs, "big") == value
    assert encode(p, value, "big") == regs


def test_scale_factor_point():
    p = pt("i16", scale="w_sf")
    assert decode(p, [1234], "big", sf=-2) == 12.34
    assert decode(p, [1234], "big", sf=3) == 1234000.0
    assert decode(p, [1234], "big", sf=0) == 1234 and isinstance(decode(p, [1234], "big", sf=0), int)
    assert encode(p, 12.34, "big", sf=-2) == [1234]
    with pytest.raises(ValueError):
        decode(p, [1234], "big")  # the scale factor's value is needed
    assert decode(p, [1234], "big", sunspec=True) is None  # a SunSpec sf that is not implemented


def test_integer_types_stay_int_without_scale():
    assert isinstance(decode(pt("u32"), [0, 5], "big"), int)
    assert isinstance(decode(pt("u32", scale=0.1), [0, 5], "big"), float)


@pytest.mark.parametrize(
    "type_, regs",
    [
        ("u16", [0xFFFF]),
        ("i16", [0x8000]),
        ("u32", [0xFFFF, 0xFFFF]),
        ("i32", [0x8000, 0x0000]),
        ("f32", [0x7FC0, 0x0000]),
    ],
)
def test_sunspec_not_implemented_is_none(type_, regs):
    p = pt(type_)
    assert decode(p, regs, "big", sunspec=True) is None
    value = decode(p, regs, "big")  # outside SunSpec these are ordinary values
    assert value is not None


@pytest.mark.parametrize(
    "type_, value",
    [
        ("u16", -1),
        ("u16", 65536),
        ("i16", 32768),
        ("i16", -32769),
        ("u32", 2**32),
        ("i32", -(2**31) - 1),
        ("u64", -1),
        ("f32", 1e39),
    ],
)
def test_out_of_range_names_the_point(type_, value):
    with pytest.raises(ValueError, match="setpoint_mw"):
        encode(pt(type_), value, "big", name="setpoint_mw")


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="hb"):
        encode(pt("u16"), "12", "big", name="hb")
    with pytest.raises(ValueError, match="ASCII"):
        encode(pt("string", words=2), "é", "big")
    with pytest.raises(ValueError, match="longer"):
        encode(pt("string", words=2), "ABCDE", "big")
    with pytest.raises(ValueError, match="finite"):
        encode(pt("i32", scale=0.1), math.inf, "big")
    with pytest.raises(ValueError, match="registers"):
        decode(pt("u32"), [1], "big")


def test_rounds_to_nearest_raw():
    p = pt("i16", scale=0.1)
    assert encode(p, 1.26, "big") == [13]
    assert encode(p, -1.26, "big") == [0xFFF3]
    assert resolution(p) == pytest.approx(0.1)
    assert resolution(pt("u16", scale="sf"), sf=-3) == pytest.approx(0.001)
    assert resolution(pt("f32")) == 0.0


def test_apply_scale_is_exact_for_decimal_factors():
    assert apply_scale(-123450, 1e-6) == -0.12345
    assert apply_scale(1234, 0.01) == 12.34


# --- properties -------------------------------------------------------------------------------------------

SCALES = st.sampled_from([1.0, 0.1, 0.01, 0.001, 10.0, 0.5, 2.0])
OFFSETS = st.sampled_from([0.0, -40.0, 100.0])


@st.composite
def int_case(draw):
    type_ = draw(st.sampled_from(sorted(RANGES)))
    lo, hi = RANGES[type_]
    return type_, draw(st.integers(lo, hi)), draw(st.sampled_from(WORD_ORDERS))


@settings(max_examples=500, deadline=None)
@given(int_case(), SCALES, OFFSETS)
def test_registers_round_trip_for_every_integer_type(case, scale, offset):
    """Any raw value survives registers -> value -> registers, whatever the scale, offset and word order."""
    type_, raw, word_order = case
    p = pt(type_, scale=scale, offset=offset)
    n = p.count
    regs = [((raw & (2 ** (16 * n) - 1)) >> (16 * (n - 1 - i))) & 0xFFFF for i in range(n)]
    if word_order == "little":
        regs.reverse()
    value = decode(p, regs, word_order)
    if type_ in ("u64", "i64") and (scale != 1 or offset != 0) and abs(raw) > 2**50:
        return  # a scaled 64-bit value is a float: past ~2^51 counts its ulp (one rounding in decode, one in encode) can reach half a count
    assert encode(p, value, word_order) == regs


@settings(max_examples=500, deadline=None)
@given(int_case(), st.integers(-4, 4))
def test_scale_factor_round_trip(case, sf):
    type_, raw, word_order = case
    if type_ in ("u64", "i64") and abs(raw) > 2**50:
        return
    p = pt(type_, scale="sf")
    regs = encode(p, apply_scale(raw, 10.0**sf), word_order, sf=sf)
    assert decode(p, regs, word_order, sf=sf) == pytest.approx(apply_scale(raw, 10.0**sf), rel=1e-12)


@settings(max_examples=500, deadline=None)
@given(st.floats(width=32, allow_nan=False), st.sampled_from(WORD_ORDERS))
def test_float32_round_trip(value, word_order):
    p = pt("f32")
    assert decode(p, encode(p, value, word_order), word_order) == value


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 16).flatmap(
        lambda n: st.tuples(
            st.just(n), st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=2 * n)
        )
    )
)
def test_string_round_trip(case):
    n, text = case
    p = pt("string", words=n)
    assert decode(p, encode(p, text, "big"), "big") == text


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(RANGES)), st.sampled_from([0.1, 0.01, 1.0]), st.data())
def test_values_encode_within_half_an_lsb(type_, scale, data):
    """A value in range encodes to the nearest raw count: it decodes back within half an LSB."""
    lo, hi = RANGES[type_]
    lo, hi = max(lo, -(2**40)), min(hi, 2**40)
    value = data.draw(st.floats(lo * scale, hi * scale, allow_nan=False))
    p = pt(type_, scale=scale)
    back = decode(p, encode(p, value, "big"), "big")
    assert abs(back - value) <= scale / 2 * (1 + 1e-9) + 1e-9 * abs(value)
