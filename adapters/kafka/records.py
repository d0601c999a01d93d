"""Reading a consumed record's headers safely, whatever bytes a foreign producer wrote.

confluent-kafka decodes header names as UTF-8 when `Message.headers()` is first called.
For a name that is not valid UTF-8 that C function returns a list *with a Python error
set*, and the message caches that list, in which the bad header's name is a NULL
pointer: touching it crashes the interpreter. A generic call notices the pending error
and raises `SystemError`; but CPython's specialised call instructions skip that check in
a hot loop (`message.headers()` then returns the broken list and leaves the error
pending). So headers are always read through `operator.methodcaller`, a generic call
that reliably raises, and `read_headers` repairs the message on failure: it keeps the
headers that were decoded, drops the undecodable ones, replaces the message's cached list
(`set_headers`), and says what it dropped. There is no raw accessor for header names, so
the dropped names cannot be copied anywhere.
"""

from __future__ import annotations

from operator import methodcaller
from typing import cast

from confluent_kafka import Message

from .producer import Headers

#: how a NULL tuple item is shown by `repr` (CPython): the mark of an undecodable name
_NULL_NAME = "(<NULL>,"
#: `get_headers(message)` is `message.headers()` through a generic call, which raises
#: SystemError when confluent-kafka leaves an error set (see the module docstring)
get_headers = methodcaller("headers")


def read_headers(message: Message) -> tuple[Headers, str | None]:
    """-> (the record's headers, None) or, if some header could not be decoded, (the
    decodable ones, why the others are missing). Runs per record: only the failure path
    does any work beyond `headers()`."""
    try:
        return cast(Headers, get_headers(message) or []), None
    except Exception as exc:  # confluent-kafka could not decode a header name
        return salvage_headers(message, exc)


def headers_of(message: Message) -> Headers:
    """A consumed record's headers as a list (undecodable ones left out)."""
    return read_headers(message)[0]


def salvage_headers(message: Message, exc: BaseException) -> tuple[Headers, str]:
    """After `headers()` raised `exc`: the decodable headers, and why some are missing.
    Call it right after that failure, instead of calling `headers()` again (the second
    call returns the NULL-holding list without raising)."""
    name = _undecodable_name(exc)
    try:
        cached = get_headers(message)  # the half-decoded list the failed call left
    except Exception:
        cached = None
    kept: Headers = []
    dropped = 0
    if isinstance(cached, list):
        for item in cached:
            if (
                type(item) is tuple
                and len(item) == 2
                and not repr(item).startswith(_NULL_NAME)
                and type(item[0]) is str
            ):
                kept.append(item)
            else:
                dropped += 1
    else:
        dropped = -1  # nothing readable
    message.set_headers(kept)  # never leave the NULL-holding list behind
    what = f"header name {name!r}" if name is not None else "a header name"
    if dropped < 0:
        left = "the record's headers cannot be read at all and are missing from this copy"
    else:
        left = (
            f"{dropped} header(s) with such a name cannot be read (confluent-kafka decodes "
            "header names as UTF-8) and are missing from this copy"
        )
    return kept, f"{what} is not valid UTF-8; {left}"


def _undecodable_name(exc: BaseException) -> bytes | None:
    """The raw bytes of the first header name that failed to decode, if the exception
    chain still carries the `UnicodeDecodeError`."""
    seen: BaseException | None = exc
    for _ in range(16):
        if seen is None:
            return None
        if isinstance(seen, UnicodeDecodeError):
            return bytes(seen.object)
        seen = seen.__cause__ or seen.__context__
    return None
