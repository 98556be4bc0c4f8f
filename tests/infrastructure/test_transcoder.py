from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import CorruptEventError
from domain.phases import PrunePhase
from infrastructure.transcoder import MsgpackTranscoder, TranscodingError


@pytest.fixture
def transcoder() -> MsgpackTranscoder:
    return MsgpackTranscoder(enums=[PrunePhase])


def assert_same(decoded: Any, original: Any) -> None:
    """Equal AND of the same types all the way down (a tuple must not come back as a list), with
    datetimes keeping their UTC offset and Decimals their exact digits."""
    assert type(decoded) is type(original), (decoded, original)
    if isinstance(original, dict):
        assert list(decoded) == list(original)
        for key in original:
            assert_same(decoded[key], original[key])
    elif isinstance(original, list | tuple):
        assert len(decoded) == len(original)
        for d, o in zip(decoded, original, strict=True):
            assert_same(d, o)
    elif isinstance(original, datetime):
        assert decoded == original
        assert decoded.utcoffset() == original.utcoffset()
        assert decoded.replace(tzinfo=None) == original.replace(tzinfo=None)
    elif isinstance(original, Decimal):
        assert str(decoded) == str(original)
    else:
        assert decoded == original


OFFSETS = [
    UTC,
    timezone(timedelta(0), "Z"),
    timezone(timedelta(hours=5, minutes=30)),
    timezone(timedelta(hours=-8)),
    timezone(timedelta(hours=14)),
    timezone(timedelta(hours=-12)),
    timezone(timedelta(hours=5, minutes=45, seconds=10)),
    ZoneInfo("America/New_York"),
]


@pytest.mark.parametrize(
    "value",
    [
        UUID("12345678-1234-5678-1234-567812345678"),
        *(datetime(2026, 3, 8, 7, 30, 15, 123_456, tzinfo=tz) for tz in OFFSETS),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-12))),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        Decimal("1234.5678"),
        Decimal("-0.000"),
        Decimal("1E+30"),
        Decimal("Infinity"),
        b"\x00\xffraw bytes",
        b"",
        PrunePhase.SWEEP_EXPIRED,
        (1, "two", b"3"),
        (),
        {1, 2, 3},
        frozenset({"a", "b"}),
        set(),
        {"nested": [(1, {2, 3}), {"deeper": (Decimal("1.5"), PrunePhase.BUILD_REACH)}]},
        {7: "int keys", "s": None, "b": True, "f": 1.5},
        2**63 - 1,
        -(2**63),
    ],
    ids=repr,
)
def test_a_value_round_trips_with_its_exact_type(
    transcoder: MsgpackTranscoder, value: object
) -> None:
    assert_same(transcoder.decode(transcoder.encode(value)), value)


def test_an_enum_decodes_to_the_very_member(transcoder: MsgpackTranscoder) -> None:
    assert transcoder.decode(transcoder.encode(PrunePhase.BUILD_REACH)) is PrunePhase.BUILD_REACH


def test_the_encoding_of_a_set_does_not_depend_on_insertion_order(
    transcoder: MsgpackTranscoder,
) -> None:
    assert transcoder.encode({3, 1, 2}) == transcoder.encode({2, 3, 1})


# --- property: nested containers ------------------------------------------------------------

offsets = st.integers(-86_399, 86_399).map(lambda s: timezone(timedelta(seconds=s)))
aware = st.datetimes(timezones=st.one_of(st.just(UTC), offsets))
hashable = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.uuids(),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.uuids(),
    aware,
    st.decimals(allow_nan=False),
    st.sampled_from(list(PrunePhase)),
    st.sets(hashable, max_size=5),
    st.frozensets(hashable, max_size=5),
)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.integers(-100, 100)), children, max_size=5
        ),
    ),
    max_leaves=15,
)


@settings(max_examples=120, deadline=None)
@given(values)
def test_any_nest_of_supported_values_round_trips_exactly(value: object) -> None:
    transcoder = MsgpackTranscoder(enums=[PrunePhase])
    assert_same(transcoder.decode(transcoder.encode(value)), value)


# --- refusing what it does not know ---------------------------------------------------------


class Widget:
    pass


class Colour(Enum):
    RED = 1


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (Widget(), "test_transcoder.Widget"),
        ({"deep": [1, (2, Widget())]}, "test_transcoder.Widget"),
        (object(), "builtins.object"),
        (Colour.RED, "Colour is not registered"),
        (2**64, "int"),
        (datetime(2026, 1, 1, 12, 0), "naive datetime 2026-01-01T12:00:00"),
        ([datetime(2026, 1, 1)], "naive datetime"),
        (datetime(2026, 1, 1, tzinfo=timezone(timedelta(microseconds=1))), "sub-second"),
    ],
    ids=[
        "class",
        "nested class",
        "object",
        "enum",
        "big int",
        "naive",
        "nested naive",
        "sub-second offset",
    ],
)
def test_an_unsupported_value_raises_transcoding_error_naming_its_type(
    transcoder: MsgpackTranscoder, value: object, named: str
) -> None:
    with pytest.raises(TranscodingError, match=named):
        transcoder.encode(value)


def test_a_transcoding_error_is_a_type_error() -> None:
    assert issubclass(TranscodingError, TypeError)


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x01",  # an array of two with one element
        msgpack.packb(msgpack.ExtType(99, b"?")),  # an extension we never wrote
        msgpack.packb(msgpack.ExtType(4, msgpack.packb(["Nope", 1]))),  # an unknown enum
        msgpack.packb(msgpack.ExtType(2, b"\xc1")),  # a broken datetime
    ],
    ids=["bad byte", "truncated", "unknown extension", "unknown enum", "broken datetime"],
)
def test_undecodable_bytes_raise_corrupt_event_error(
    transcoder: MsgpackTranscoder, data: bytes
) -> None:
    with pytest.raises(CorruptEventError, match=r"\S"):
        transcoder.decode(data)
