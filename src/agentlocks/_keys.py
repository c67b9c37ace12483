"""Key validation (guarantee 10): any ``str`` of 1 to 1024 UTF-8 bytes, checked before I/O."""

from __future__ import annotations

from typing import Final

from .errors import InvalidKey

MAX_KEY_BYTES: Final = 1024


def check_key(key: object, what: str = "key") -> str:
    """Return ``key`` if it is a ``str`` of 1 to 1024 UTF-8 bytes, else raise ``InvalidKey``.

    This runs on every acquire, so the common case (short ASCII) costs two C calls.
    """
    if type(key) is str and key.isascii() and 0 < len(key) <= MAX_KEY_BYTES:
        return key
    if not isinstance(key, str):
        raise InvalidKey(
            f"{what} must be a str of 1 to {MAX_KEY_BYTES} UTF-8 bytes, got {type(key).__name__}"
        )
    if not key:
        raise InvalidKey(f"{what} must not be empty (1 to {MAX_KEY_BYTES} UTF-8 bytes)")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey(f"{what} must be valid Unicode (no lone surrogates)") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(
            f"{what} is {size} UTF-8 bytes long; at most {MAX_KEY_BYTES} are accepted",
            key=key[:64],
        )
    return str(key)
