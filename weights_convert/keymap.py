"""What a dialect module tells the converter: where each plan layer's tensors live in a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field

from .messages import one_line, show


class ConversionError(ValueError):
    """A checkpoint that cannot become an npshuffle model; the message (one line) says what and where."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


@dataclass
class KeyMap:
    """Checkpoint key prefixes per plan layer.

    ``convs[name] = (conv_prefix, bn_prefix)``: the plan's ConvLayer ``name`` is the conv at
    ``f"{conv_prefix}.weight"`` (and ``.bias`` if the checkpoint has one) followed by the batch norm
    at ``f"{bn_prefix}.weight|bias|running_mean|running_var"``.
    ``classifier = (weight_key, bias_key or None)``.
    """

    convs: dict[str, tuple[str, str]] = field(default_factory=dict)
    classifier: tuple[str, str | None] = ("", None)

    def add_conv_bn(self, layer: str, conv: str) -> None:
        """Plan layer ``layer`` is the conv at ``conv`` (e.g. "stage2.0.branch2.3") followed by the
        batch norm right after it in the same nn.Sequential ("stage2.0.branch2.4")."""
        sequential, index = conv.rsplit(".", 1)
        self.convs[layer] = (conv, f"{sequential}.{int(index) + 1}")


def shape_of(state_dict: dict, key: str, ndim: int = 4) -> tuple[int, ...]:
    """The shape of ``state_dict[key]`` (a conv weight: 4 dimensions; a classifier's: 2), or a
    ConversionError naming the missing key or the wrong number of dimensions."""
    try:
        shape = tuple(state_dict[key].shape)
    except KeyError:
        raise ConversionError(f"cannot work out the architecture: the checkpoint has no {key!r}") from None
    if len(shape) != ndim:
        raise ConversionError(f"{key} has shape {show(shape)}, expected {ndim} dimensions")
    return shape


def numbered_children(state_dict: dict, prefix: str) -> list[int]:
    """Sorted indices ``i`` such that some key starts with ``f"{prefix}{i}."``."""
    found = set()
    for key in state_dict:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isascii() and head.isdigit() and len(head) <= 6:  # not '²', not a 5000-digit number
                found.add(int(head))
    return sorted(found)
