"""Length-prefixed JSON messages between the trusted parent and harness workers.

Every message is a 4-byte big-endian length followed by UTF-8 JSON. numpy arrays travel as
``{"__ndarray__": base64 of the .npy bytes}`` written and read with ``allow_pickle=False``.
Nothing here ever unpickles: what a worker sends is data, decoded by ``json`` and
``numpy.load`` only, and a size guard stops a worker from making the parent buffer
unbounded input. numpy is imported lazily so a worker whose harness never touches numpy
does not pay for it.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import struct
from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")
_NDARRAY_KEY = "__ndarray__"


class ProtocolError(Exception):
    """The peer broke the framing (oversized, truncated or undecodable message)."""


class TooManyObjects(ProtocolError):
    """A well-framed message that would decode into more objects than the reader allows."""


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)   # unrolled: long strings scan fast
_SURROGATE = re.compile("[\ud800-\udfff]")


def count_objects(payload: bytes) -> int:
    """An upper bound on the Python objects ``decode(payload)`` would build, found without
    building them: containers, commas and colons outside strings (every value but the first
    of a container follows a comma; every key a colon), plus one."""
    bare = _STRING.sub(b'""', payload)
    return 1 + sum(bare.count(c) for c in (b"[", b"{", b",", b":"))


# -- JSON with numpy arrays --------------------------------------------------------------

def _to_jsonable(obj: Any, lenient: bool) -> Any:
    """``json.dumps`` fallback: numpy arrays and scalars; in lenient mode anything else as repr."""
    kind = type(obj).__module__
    if kind == "numpy":
        import numpy as np

        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                if lenient:
                    return repr(obj)[:2000]
                raise TypeError("numpy arrays of Python objects cannot be sent (no pickle)")
            buf = io.BytesIO()
            np.save(buf, obj, allow_pickle=False)
            return {_NDARRAY_KEY: base64.b64encode(buf.getvalue()).decode("ascii")}
        if isinstance(obj, np.generic):
            return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if lenient:
        return repr(obj)[:2000]
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-serialisable")


def encode(obj: Any, *, lenient: bool = False) -> bytes:
    """JSON bytes of ``obj``. Strict mode raises TypeError/ValueError on anything that is not
    JSON data or a numpy array; lenient mode (for logs) writes such values as their repr, and
    a lone surrogate (no UTF-8 for it) as the text of its escape, e.g. ``\\udcff``."""
    text = json.dumps(obj, default=lambda o: _to_jsonable(o, lenient), ensure_ascii=False)
    if lenient:
        # Escaped backslash: the peer decodes the six characters, not the surrogate again.
        text = _SURROGATE.sub(lambda m: f"\\\\u{ord(m.group()):04x}", text)
    return text.encode("utf-8")


def _decode_ndarray(b64: str):
    import numpy as np

    raw = base64.b64decode(b64.encode("ascii"), validate=True)
    fp = io.BytesIO(raw)
    # Check the header against the payload before loading, so a forged shape cannot make
    # numpy allocate far more than the message carried.
    fmt = np.lib.format
    version = fmt.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(fp)
    else:
        raise ProtocolError(f"unsupported .npy version {version}")
    if dtype.hasobject:
        raise ProtocolError("ndarray with object dtype")
    count = 1
    for n in shape:
        count *= int(n)
    if count * dtype.itemsize != len(raw) - fp.tell():
        raise ProtocolError("ndarray payload does not match its header")
    fp.seek(0)
    return np.load(fp, allow_pickle=False)


def _object_hook(d: dict) -> Any:
    if len(d) == 1 and _NDARRAY_KEY in d and isinstance(d[_NDARRAY_KEY], str):
        return _decode_ndarray(d[_NDARRAY_KEY])
    return d


def decode(data: bytes) -> Any:
    """Inverse of ``encode``; raises ProtocolError on anything malformed."""
    try:
        return json.loads(data.decode("utf-8"), object_hook=_object_hook)
    except ProtocolError:
        raise
    except (ValueError, TypeError, RecursionError, UnicodeDecodeError) as e:
        raise ProtocolError(f"undecodable message: {type(e).__name__}: {e}"[:500]) from None


# -- framing -------------------------------------------------------------------------------

def frame(payload: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    if len(payload) > max_bytes:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the limit of {max_bytes}")
    return _HEADER.pack(len(payload)) + payload


def pack(obj: Any, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """One complete frame for ``obj`` (strict encoding)."""
    return frame(encode(obj), max_bytes)


def send(fd: int, obj: Any, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
    """Blocking write of one message to a raw file descriptor."""
    write_all(fd, pack(obj, max_bytes))


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("peer closed the channel")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv(fd: int, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Blocking read of one message from a raw file descriptor (EOFError when closed)."""
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    if size > max_bytes:
        raise ProtocolError(f"incoming message of {size} bytes exceeds the limit of {max_bytes}")
    return decode(_read_exact(fd, size))


class FrameReader:
    """Incremental decoder for a non-blocking reader: ``feed`` bytes, get whole messages."""

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES, max_objects: int | None = None):
        self.max_bytes = max_bytes
        self.max_objects = max_objects   # refuse a message that would decode into more objects
        self.last_objects = 0            # the bound for the last message decoded
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        messages = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > self.max_bytes:
                raise ProtocolError(f"incoming message of {size} bytes exceeds the limit of {self.max_bytes}")
            end = _HEADER.size + size
            if len(self._buf) < end:
                break
            payload = bytes(self._buf[_HEADER.size:end])
            del self._buf[:end]
            if self.max_objects is not None:
                self.last_objects = count_objects(payload)
                if self.last_objects > self.max_objects:
                    raise TooManyObjects(f"the result would decode into about {self.last_objects} objects, "
                                         f"more than the limit of {self.max_objects} per example")
            messages.append(decode(payload))
        return messages
