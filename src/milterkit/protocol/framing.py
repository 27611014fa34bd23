"""Incremental, bounded framing of milter packets.

A packet is ``uint32 length`` (command byte + payload), one command byte and
the payload. The decoder checks the length field as soon as the five header
bytes are in, so an absurd length is refused before any of its payload is
held. Payload bytes are copied once, from the bytes the caller fed in to the
``bytes`` object handed out: small frames are sliced out of the receive
buffer; a large frame split over several reads is gathered as a list of views
and joined once at the end.
"""

from __future__ import annotations

import struct

from milterkit.protocol.errors import LocalProtocolError, RemoteProtocolError

_HEADER = struct.Struct(">IB")
HEADER_SIZE = 5
#: Frames with a payload at least this large are gathered without re-buffering.
_GATHER_THRESHOLD = 16384
#: Pieces of a gathered frame smaller than this are coalesced into one bytearray,
#: so a peer trickling bytes costs neither one object per read nor O(n^2) time.
_SMALL_PIECE = 4096


def encode_frame(command: int, payload: bytes = b"") -> bytes:
    """One packet: length, command byte, payload."""
    return _HEADER.pack(len(payload) + 1, command) + payload


def frame_length_error(length: int, limit: int) -> RemoteProtocolError | None:
    """The error for a length field, or None when it is acceptable."""
    if length == 0:
        return RemoteProtocolError("packet length 0: a packet needs at least the command byte")
    if length - 1 > limit:
        return RemoteProtocolError(
            f"packet length {length} announces a payload of {length - 1} bytes, "
            f"over the limit of {limit}"
        )
    return None


class FrameDecoder:
    """Turns a byte stream into ``(command, payload)`` pairs.

    ``max_payload`` may be raised after negotiation (MDS) by assigning it.
    """

    __slots__ = (
        "_buf",
        "_gather",
        "_gather_cmd",
        "_gather_len",
        "_gather_missing",
        "_pos",
        "max_payload",
    )

    # Invariant the connections' fast paths rely on: ``_buf`` is ``b""`` (and
    # ``_pos`` 0) whenever all of it was handed out, so ``not _buf and _gather
    # is None`` means "nothing buffered" without a call to :attr:`buffered`.

    def __init__(self, max_payload: int) -> None:
        if max_payload < 0:
            raise LocalProtocolError(f"max_payload must be >= 0, not {max_payload}")
        self.max_payload = max_payload
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._gather: list[memoryview | bytearray] | None = None
        self._gather_cmd = 0
        self._gather_len = 0
        self._gather_missing = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as frames."""
        gathered = 0
        if self._gather is not None:
            # the header of the frame being gathered is still unconsumed input
            gathered = HEADER_SIZE + self._gather_len - self._gather_missing
        return len(self._buf) - self._pos + gathered

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; parse them with :meth:`next_frame`."""
        if not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)  # a caller's mutable buffer must not change under us
        if self._gather is not None:
            rest = self._feed_gather(memoryview(data))
            if not rest:
                return
            data = bytes(rest)
        if self._pos >= len(self._buf):
            self._buf = data
            self._pos = 0
            return
        if isinstance(self._buf, bytes):
            self._buf = bytearray(memoryview(self._buf)[self._pos :])
            self._pos = 0
        elif self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def _feed_gather(self, view: memoryview) -> memoryview:
        """Take what the frame being gathered still needs; return the rest."""
        assert self._gather is not None
        take = min(self._gather_missing, len(view))
        if take < _SMALL_PIECE:
            tail = self._gather[-1]
            if isinstance(tail, bytearray):
                tail += view[:take]
            else:
                self._gather.append(bytearray(view[:take]))
        else:
            self._gather.append(view[:take])
        self._gather_missing -= take
        return view[take:]

    def next_frame(self) -> tuple[int, bytes] | None:
        """The next complete frame, or None if more bytes are needed."""
        # Performance: this runs twice per packet (the second call finds no
        # more data), so the length check and the consume step are inlined
        # rather than calls to helper methods.
        if self._gather is not None:
            return self._finish_gather()
        buf, pos = self._buf, self._pos
        size = len(buf)
        if size - pos < HEADER_SIZE:
            return None
        length, command = _HEADER.unpack_from(buf, pos)
        if length == 0 or length - 1 > self.max_payload:
            error = frame_length_error(length, self.max_payload)
            assert error is not None
            raise error
        end = pos + 4 + length
        if end <= size:
            if type(buf) is bytes:
                payload = buf[pos + HEADER_SIZE : end]
            else:
                payload = bytes(memoryview(buf)[pos + HEADER_SIZE : end])
            if end >= size:
                self._buf = b""
                self._pos = 0
            else:
                self._pos = end
            return command, payload
        if length - 1 >= _GATHER_THRESHOLD:
            self._start_gather(command, length - 1)
        return None

    def _start_gather(self, command: int, payload_len: int) -> None:
        start = self._pos + HEADER_SIZE
        head = memoryview(bytes(memoryview(self._buf)[start:]))
        self._gather = [head]
        self._gather_cmd = command
        self._gather_len = payload_len
        self._gather_missing = payload_len - len(head)
        self._buf = b""
        self._pos = 0

    def _finish_gather(self) -> tuple[int, bytes] | None:
        if self._gather_missing:
            return None
        assert self._gather is not None
        payload = b"".join(self._gather)
        command = self._gather_cmd
        self._gather = None
        return command, payload
