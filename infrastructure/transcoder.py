"""The msgpack transcoder: compact, exact round-trips, and a clear error for unknown types."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import msgpack
from eventsourcing.persistence import Transcoder

from domain.errors import CorruptEventError

# Extension type codes are part of the on-disk format: never renumber them.
_UUID, _DATETIME, _DECIMAL, _ENUM, _TUPLE, _SET, _FROZENSET = 1, 2, 3, 4, 5, 6, 7


class TranscodingError(TypeError):
    """An object of a type the transcoder does not know, or a naive datetime."""


class MsgpackTranscoder(Transcoder):
    """Encodes UUID, tz-aware datetime, Decimal, registered enums, tuples, sets and bytes
    inside nested dicts and lists. Enums resolve by registered name, never by import."""

    def __init__(self, enums: Iterable[type[Enum]] = ()) -> None:
        self._enums: dict[str, type[Enum]] = {}
        self._enum_names: dict[type[Enum], str] = {}
        for cls in enums:
            self.register_enum(cls)

    def register_enum(self, cls: type[Enum], name: str | None = None) -> None:
        key = name or cls.__qualname__
        self._enums[key] = cls
        self._enum_names[cls] = key

    def encode(self, obj: Any) -> bytes:
        try:
            return bytes(self._pack(obj))
        except TranscodingError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise TranscodingError(f"cannot encode {type(obj).__name__}: {exc}") from None

    def decode(self, data: bytes) -> Any:
        try:
            return msgpack.unpackb(
                data, raw=False, strict_map_key=False, ext_hook=self._ext_hook, use_list=True
            )
        except CorruptEventError:
            raise
        except Exception as exc:
            raise CorruptEventError(
                f"cannot decode msgpack ({len(data)} bytes): {type(exc).__name__} {exc}"
            ) from None

    def _pack(self, obj: Any) -> bytes:
        return msgpack.packb(obj, default=self._default, use_bin_type=True, strict_types=True)  # type: ignore[no-any-return]

    def _default(self, obj: Any) -> msgpack.ExtType:
        if isinstance(obj, Enum):
            name = self._enum_names.get(type(obj))
            if name is None:
                raise TranscodingError(
                    f"enum {type(obj).__qualname__} is not registered with the transcoder"
                )
            return msgpack.ExtType(_ENUM, self._pack([name, obj.value]))
        if isinstance(obj, UUID):
            return msgpack.ExtType(_UUID, obj.bytes)
        if isinstance(obj, datetime):
            offset = obj.utcoffset()
            if offset is None:
                raise TranscodingError(f"naive datetime {obj.isoformat()} has no timezone")
            if offset % timedelta(seconds=1):
                # The format stores whole seconds of offset; refuse rather than shift it.
                raise TranscodingError(
                    f"datetime {obj.isoformat()} has a sub-second UTC offset; not supported"
                )
            micros = (obj - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
            return msgpack.ExtType(_DATETIME, self._pack([micros, offset // timedelta(seconds=1)]))
        if isinstance(obj, Decimal):
            return msgpack.ExtType(_DECIMAL, str(obj).encode())
        if isinstance(obj, tuple):
            return msgpack.ExtType(_TUPLE, self._pack(list(obj)))
        if isinstance(obj, frozenset):
            return msgpack.ExtType(_FROZENSET, self._pack(sorted(obj, key=repr)))
        if isinstance(obj, set):
            return msgpack.ExtType(_SET, self._pack(sorted(obj, key=repr)))
        if type(obj) in (bool, int, float, str, bytes, dict, list) or obj is None:
            raise TranscodingError(f"unexpected fallback for {type(obj).__name__}")
        # Subclasses of builtins (str enums aside) are refused rather than silently narrowed.
        raise TranscodingError(
            f"object of type {type(obj).__module__}.{type(obj).__qualname__} is not "
            "supported by the msgpack transcoder"
        )

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == _UUID:
            return UUID(bytes=data)
        if code == _DATETIME:
            micros, offset = self.decode(data)
            tz = timezone(timedelta(seconds=offset)) if offset else UTC
            # Build the local wall time directly: near datetime.min/max the UTC instant of a
            # valid aware datetime can lie outside datetime's range.
            wall = datetime(1970, 1, 1) + timedelta(microseconds=micros, seconds=offset)
            return wall.replace(tzinfo=tz)
        if code == _DECIMAL:
            return Decimal(data.decode())
        if code == _ENUM:
            name, value = self.decode(data)
            try:
                return self._enums[name](value)
            except KeyError:
                raise CorruptEventError(f"unknown enum {name!r} in stored event") from None
        if code == _TUPLE:
            return tuple(self.decode(data))
        if code == _SET:
            return set(self.decode(data))
        if code == _FROZENSET:
            return frozenset(self.decode(data))
        raise CorruptEventError(f"unknown msgpack extension type {code}")
