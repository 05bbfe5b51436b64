"""Error messages about untrusted files: one line, a few hundred characters at most.

A hostile checkpoint chooses the keys, strings, tuples and integers that end up in our error
messages. Formatting them with ``repr`` can take unbounded time and memory (a tuple that refers
to itself 60 levels deep is a 2**60-element repr; an integer of 10**5000 cannot be turned into a
string at all), and a key holding newlines or terminal escapes would garble the user's terminal.
So values from a file are shown with :func:`show`, which looks at a bounded number of items, and
every message goes through :func:`one_line` before it is raised.
"""

from __future__ import annotations

import itertools

MAX_MESSAGE_CHARS = 400
_SHOW_ITEMS = 4  # items shown per container
_SHOW_DEPTH = 2  # containers shown inside containers
_SHOW_CHARS = 40  # characters shown of a string


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` with control characters escaped, cut to ``limit`` characters (ending in ``...``)."""
    text = text[: 4 * limit]  # bound the work before escaping
    printable = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return printable if len(printable) <= limit else printable[: limit - 3] + "..."


def show(value: object, limit: int = 80) -> str:
    """A short, bounded ``repr``-like view of a value read from an untrusted file."""
    return one_line(_brief(value, 0), limit)


def _brief(value: object, depth: int) -> str:
    if value is None or type(value) in (bool, float):
        return repr(value)
    if type(value) is int:
        return repr(value) if value.bit_length() <= 64 else f"<{value.bit_length()}-bit integer>"
    if type(value) in (str, bytes):
        head = repr(value[:_SHOW_CHARS])
        return head + "..." if len(value) > _SHOW_CHARS else head
    if isinstance(value, (tuple, list, dict)):
        return _brief_container(value, depth)
    return f"<{type(value).__name__}>"


def _brief_container(value: tuple | list | dict, depth: int) -> str:
    opening, closing = {tuple: "()", list: "[]"}.get(type(value), "{}")
    if depth >= _SHOW_DEPTH:
        return f"{opening}...{closing}"
    if isinstance(value, dict):
        pairs = itertools.islice(value.items(), _SHOW_ITEMS)
        items = [f"{_brief(k, depth + 1)}: {_brief(v, depth + 1)}" for k, v in pairs]
    else:
        items = [_brief(v, depth + 1) for v in value[:_SHOW_ITEMS]]
    if len(value) > _SHOW_ITEMS:
        items.append(f"... ({len(value)} items)")
    elif type(value) is tuple and len(value) == 1:
        items.append("")
    return opening + ", ".join(items) + closing
