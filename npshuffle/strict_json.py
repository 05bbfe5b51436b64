"""JSON from files we do not trust: a key given twice in one object is refused, and strings that
are not text (a lone surrogate) can be told.

Python's ``json`` keeps the last of two equal keys, other readers the first, so
``{"0": "cat", "0": "dog"}`` (a class name) or a safetensors header naming one tensor twice means
different things to different programs. ``json.loads(text, object_pairs_hook=refuse_duplicate_keys)``
raises :class:`DuplicateKeyError` instead, naming the key.

JSON can also spell a lone surrogate (``"\\ud800"``), which Python decodes into a ``str`` that is no
text: no UTF-8 output can hold it. :func:`is_text` tells them apart.
"""

from __future__ import annotations


class DuplicateKeyError(ValueError):
    """A JSON object names one key twice; ``args[0]`` is the key."""


def refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """``json.loads``'s ``object_pairs_hook``: the object as a dict, or :class:`DuplicateKeyError`."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def is_text(value: str) -> bool:
    """Whether ``value`` can be written as UTF-8 (False for a string holding a lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
