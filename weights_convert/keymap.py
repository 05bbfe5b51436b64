"""What a dialect module tells the converter: where each plan layer's tensors live in a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field


class ConversionError(ValueError):
    """A checkpoint that cannot become an npshuffle model; the message says what and where."""


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


def shape_of(state_dict: dict, key: str) -> tuple[int, ...]:
    """The shape of ``state_dict[key]``, or a ConversionError naming the missing key."""
    try:
        return tuple(state_dict[key].shape)
    except KeyError:
        raise ConversionError(f"cannot work out the architecture: the checkpoint has no {key!r}") from None


def numbered_children(state_dict: dict, prefix: str) -> list[int]:
    """Sorted indices ``i`` such that some key starts with ``f"{prefix}{i}."``."""
    found = set()
    for key in state_dict:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)
