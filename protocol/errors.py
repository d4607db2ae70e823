"""The codec's one error hierarchy: everything it raises on bad input derives from `DnyError`."""

from __future__ import annotations


class DnyError(Exception):
    """Base of every error raised by the `protocol` package on bad input."""


class FrameError(DnyError):
    """The bytes are not one well-formed DNY frame."""


class ChecksumError(FrameError):
    """The 16-bit byte sum does not match the frame's checksum field."""


class LengthError(FrameError):
    """The length field is outside 9..max_length or disagrees with the bytes given."""


class TruncatedError(FrameError):
    """Fewer bytes than the header or the length field announces."""


class PayloadError(DnyError):
    """A data block that does not fit its command's layout (too short, or a value out of range)."""
