"""Every ShuffleNet variant as data, and the one function that turns a spec into a :class:`Plan`.

Two versions:

* **V1** (Zhang et al. 2017): units of 1x1 *group* conv -> channel shuffle -> 3x3 depthwise ->
  1x1 group conv, with an identity (stride 1, add) or 3x3 avg-pool (stride 2, concat) shortcut.
  Its widths depend on the number of groups ``g`` (the paper's Table 1): more groups make each
  1x1 conv cheaper (it has 1/g of a dense conv's parameters), so the budget buys more channels.
* **V2** (Ma et al. 2018): units that split the channels in two, run 1x1 -> 3x3 dw -> 1x1 on one
  half and concatenate, so every conv keeps equal in/out widths (guideline G1) and none is grouped (G2).

Two *dialects* of the same networks (how published checkpoints wire them):

* ``"torchvision"``: torchvision's ``shufflenet_v2_*`` (split in halves, concat, shuffle(2) at the
  end of every unit; fc with bias; RGB input normalised by the ImageNet mean/std). For V1, which
  torchvision lacks, this dialect is the paper's wiring with torchvision-style names (see
  ``npshuffle.training.torch_ref``).
* ``"megvii"``: the authors' ShuffleNet-Series code (BGR 0..255 input; V1 shuffles as
  ``reshape(n, c/g, g, h, w)``; V2 splits even/odd channels instead of shuffling at the end and its
  stride-2 units give the shortcut branch ``in`` channels and the main branch ``out - in``;
  bias-free classifier).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .plan import Classifier, ConvLayer, Plan, V1Unit, V2Unit

DIALECTS = ("torchvision", "megvii")
WIDTHS = ("0.5x", "1.0x", "1.5x", "2.0x")

# ShuffleNet V1: (stem, stage 2, stage 3, stage 4) output channels per (groups, width).
# 1.0x rows are the paper's Table 1. g3 and g8 rows are Megvii's published code exactly. The other
# widths are the 1.0x width times the multiplier, rounded to a multiple of 4 * g (so that the
# bottleneck, out/4, splits into g groups); the stem is 12/24/24/48 channels as in Megvii's code,
# except g8 0.5x's 16 (so that 192 - stem, the first unit's branch width, divides by 8).
V1_CHANNELS: dict[tuple[int, str], tuple[int, int, int, int]] = {
    (1, "0.5x"): (12, 72, 144, 288),
    (1, "1.0x"): (24, 144, 288, 576),
    (1, "1.5x"): (24, 216, 432, 864),
    (1, "2.0x"): (48, 288, 576, 1152),
    (2, "0.5x"): (12, 104, 200, 400),
    (2, "1.0x"): (24, 200, 400, 800),
    (2, "1.5x"): (24, 304, 600, 1200),
    (2, "2.0x"): (48, 400, 800, 1600),
    (3, "0.5x"): (12, 120, 240, 480),
    (3, "1.0x"): (24, 240, 480, 960),
    (3, "1.5x"): (24, 360, 720, 1440),
    (3, "2.0x"): (48, 480, 960, 1920),
    (4, "0.5x"): (12, 144, 272, 544),
    (4, "1.0x"): (24, 272, 544, 1088),
    (4, "1.5x"): (24, 416, 816, 1632),
    (4, "2.0x"): (48, 544, 1088, 2176),
    (8, "0.5x"): (16, 192, 384, 768),
    (8, "1.0x"): (24, 384, 768, 1536),
    (8, "1.5x"): (24, 576, 1152, 2304),
    (8, "2.0x"): (48, 768, 1536, 3072),
}

# ShuffleNet V2: (stem, stage 2, stage 3, stage 4, head conv) output channels (the paper's Table 5).
V2_CHANNELS: dict[str, tuple[int, int, int, int, int]] = {
    "0.5x": (24, 48, 96, 192, 1024),
    "1.0x": (24, 116, 232, 464, 1024),
    "1.5x": (24, 176, 352, 704, 1024),
    "2.0x": (24, 244, 488, 976, 2048),
}

STAGE_REPEATS = (4, 8, 4)


class ArchError(ValueError):
    """An architecture that cannot be built (inconsistent widths, groups, ...)."""


@dataclass(frozen=True)
class V1Spec:
    """ShuffleNet V1: ``groups``, the stem width and each stage's output width and unit count."""

    groups: int
    stem_channels: int
    stage_channels: tuple[int, ...]
    stage_repeats: tuple[int, ...] = STAGE_REPEATS
    num_classes: int = 1000
    version: int = 1


@dataclass(frozen=True)
class V2Spec:
    """ShuffleNet V2: the stem width, each stage's output width and unit count, the head conv width."""

    stem_channels: int
    stage_channels: tuple[int, ...]
    head_channels: int
    stage_repeats: tuple[int, ...] = STAGE_REPEATS
    num_classes: int = 1000
    version: int = 2


def v1_spec(groups: int = 3, width: str = "1.0x", num_classes: int = 1000) -> V1Spec:
    """The paper's ShuffleNet V1 ``width`` with ``groups`` groups (1, 2, 3, 4 or 8)."""
    try:
        stem, *stages = V1_CHANNELS[(groups, width)]
    except KeyError:
        raise ArchError(
            f"no ShuffleNet V1 with groups={groups}, width={width!r}: groups is one of 1, 2, 3, 4, 8 "
            f"and width one of {', '.join(WIDTHS)}"
        ) from None
    return V1Spec(groups, stem, tuple(stages), num_classes=num_classes)


def v2_spec(width: str = "1.0x", num_classes: int = 1000) -> V2Spec:
    """The paper's ShuffleNet V2 ``width`` (0.5x, 1.0x, 1.5x or 2.0x)."""
    try:
        stem, *stages, head = V2_CHANNELS[width]
    except KeyError:
        raise ArchError(f"no ShuffleNet V2 width {width!r}: use one of {', '.join(WIDTHS)}") from None
    return V2Spec(stem, tuple(stages), head, num_classes=num_classes)


def spec_to_dict(spec: V1Spec | V2Spec) -> dict:
    """JSON-ready form of a spec (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


# Bounds on a spec read from a file: far above any ShuffleNet of either paper (V2 x2.0: 3 stages
# of at most 976 channels, a 2048-channel head conv, 16 units, 7.4 M parameters), far below what
# would exhaust memory (64 M float32 parameters: 256 MB).
MAX_STAGES, MAX_REPEATS, MAX_CHANNELS, MAX_CLASSES, MAX_GROUPS = 8, 64, 8192, 100_000, 64
MAX_PARAMETERS = 64_000_000


def _strict_int(value, name: str) -> int:
    """An integer written as one (JSON ``8``, not ``8.0``, ``true`` or ``Infinity``)."""
    if type(value) is not int:
        raise ArchError(f"{name} must be an integer, got {value!r}"[:200])
    return value


def spec_from_dict(data: dict) -> V1Spec | V2Spec:
    """Inverse of :func:`spec_to_dict`, for descriptions read from files: every field must be an
    integer within the bounds above; raises :class:`ArchError` on anything else."""
    if not isinstance(data, dict):
        raise ArchError(f"malformed architecture description: an object expected, got {type(data).__name__}")
    cls = {1: V1Spec, 2: V2Spec}.get(data.get("version"))
    if cls is None:
        version = repr(data.get("version"))[:50]
        raise ArchError(f"malformed architecture description: version must be 1 or 2, got {version}")
    names = set(cls.__dataclass_fields__)
    if set(data) != names:
        raise ArchError(f"malformed architecture description: fields must be {sorted(names)}, got "
                        f"{sorted(map(str, data))}"[:300])
    fields = {}
    for key, value in data.items():
        if key in ("stage_channels", "stage_repeats"):
            if not isinstance(value, list) or not 1 <= len(value) <= MAX_STAGES:
                raise ArchError(f"{key} must be a list of 1 to {MAX_STAGES} integers")
            fields[key] = tuple(_strict_int(v, key) for v in value)
        else:
            fields[key] = _strict_int(value, key)
    spec = cls(**fields)
    check_spec(spec)
    return spec


def variant_name(spec: V1Spec | V2Spec) -> str:
    """``shufflenet_v2_x1_0`` / ``shufflenet_v1_g3_x0_5`` for a table variant, else ``..._custom``."""
    if isinstance(spec, V2Spec):
        for width, channels in V2_CHANNELS.items():
            if channels == (spec.stem_channels, *spec.stage_channels, spec.head_channels):
                if spec.stage_repeats == STAGE_REPEATS:
                    return "shufflenet_v2_x" + width[:-1].replace(".", "_")
        return "shufflenet_v2_custom"
    for (groups, width), channels in V1_CHANNELS.items():
        if groups == spec.groups and channels == (spec.stem_channels, *spec.stage_channels):
            if spec.stage_repeats == STAGE_REPEATS:
                return f"shufflenet_v1_g{groups}_x" + width[:-1].replace(".", "_")
    return f"shufflenet_v1_g{spec.groups}_custom"


def check_spec(spec: V1Spec | V2Spec) -> None:
    """Raise :class:`ArchError` unless ``spec`` is within the bounds above and every conv of it
    has whole channel groups."""
    positive = [spec.stem_channels, *spec.stage_channels, *spec.stage_repeats, spec.num_classes]
    if isinstance(spec, V2Spec):
        positive.append(spec.head_channels)
    if len(spec.stage_channels) != len(spec.stage_repeats) or not spec.stage_channels:
        raise ArchError("stage_channels and stage_repeats must be non-empty and of equal length")
    if any(int(v) != v or v <= 0 for v in positive):
        raise ArchError(f"every width, repeat count and num_classes must be a positive integer: {spec}")
    widths = [spec.stem_channels, *spec.stage_channels] + ([spec.head_channels] if isinstance(spec, V2Spec) else [])
    if (len(spec.stage_channels) > MAX_STAGES or max(spec.stage_repeats) > MAX_REPEATS
            or max(widths) > MAX_CHANNELS or spec.num_classes > MAX_CLASSES
            or (isinstance(spec, V1Spec) and spec.groups > MAX_GROUPS)):
        raise ArchError(
            f"architecture out of bounds: at most {MAX_STAGES} stages of {MAX_REPEATS} units, {MAX_CHANNELS} "
            f"channels, {MAX_CLASSES} classes and {MAX_GROUPS} groups (got {spec})"[:400]
        )
    if isinstance(spec, V2Spec):
        if any(c % 2 for c in spec.stage_channels):
            raise ArchError(f"ShuffleNet V2 stage widths must be even (split in two): {spec.stage_channels}")
        return
    g = spec.groups
    if g <= 0:
        raise ArchError(f"groups must be positive, got {g}")
    in_channels = spec.stem_channels
    for stage, out_channels in enumerate(spec.stage_channels):
        mid = out_channels // 4
        problems = []
        if out_channels % 4 or mid % g:
            problems.append(f"its bottleneck width {out_channels}/4 must be a whole multiple of groups={g}")
        if stage > 0 and in_channels % g:
            problems.append(f"its input width {in_channels} must divide by groups={g}")
        if out_channels <= in_channels or (out_channels - in_channels) % g:
            problems.append(
                f"its first unit's branch width {out_channels} - {in_channels} must be positive "
                f"and divide by groups={g}"
            )
        if problems:
            raise ArchError(f"ShuffleNet V1 stage {stage + 2} ({out_channels} channels): " + "; ".join(problems))
        in_channels = out_channels


def build_plan(spec: V1Spec | V2Spec, dialect: str = "torchvision") -> Plan:
    """The layer plan of ``spec`` wired as ``dialect`` wires it."""
    if dialect not in DIALECTS:
        raise ArchError(f"unknown dialect {dialect!r}: use one of {', '.join(DIALECTS)}")
    check_spec(spec)
    stem = ConvLayer("stem", 3, spec.stem_channels, kernel=3, stride=2, padding=1, relu=True)
    if isinstance(spec, V1Spec):
        units = _v1_units(spec, dialect)
        head = None
        features = spec.stage_channels[-1]
    else:
        units = _v2_units(spec, dialect)
        head = ConvLayer("head", spec.stage_channels[-1], spec.head_channels, relu=True)
        features = spec.head_channels
    return Plan(stem, tuple(units), head, Classifier("classifier", features, spec.num_classes))


def unit_layout(spec: V1Spec | V2Spec):
    """Yield (unit index, stage index, input width, output width, stride) for every unit, in order.

    Each stage starts with a stride-2 unit that widens ``cin -> cout``; the rest keep ``cout``.
    Unit 0 is the first unit of the network (V1 does not group its first 1x1 conv).
    """
    index, in_channels = 0, spec.stem_channels
    for stage, (out_channels, repeats) in enumerate(zip(spec.stage_channels, spec.stage_repeats, strict=True)):
        for i in range(repeats):
            yield index, stage, in_channels, out_channels, (2 if i == 0 else 1)
            index, in_channels = index + 1, out_channels


def _v1_units(spec: V1Spec, dialect: str) -> list[V1Unit]:
    units = []
    g = spec.groups
    for index, _, cin, cout, stride in unit_layout(spec):
        name = f"units.{index}"
        first = index == 0
        mid = cout // 4
        branch_out = cout - cin if stride == 2 else cout  # stride 2 concatenates the pooled input
        units.append(
            V1Unit(
                name, cin, cout, stride, g,
                shuffle="megvii" if dialect == "megvii" else "torchvision",
                # the first unit's input (the stem, 12-48 channels) is too thin to split into groups
                pw1=ConvLayer(f"{name}.pw1", cin, mid, groups=1 if first else g, relu=True),
                dw=ConvLayer(f"{name}.dw", mid, mid, kernel=3, stride=stride, padding=1, groups=mid),
                pw2=ConvLayer(f"{name}.pw2", mid, branch_out, groups=g),
            )
        )
    return units


def _v2_units(spec: V2Spec, dialect: str) -> list[V2Unit]:
    units = []
    for index, _, cin, cout, stride in unit_layout(spec):
        name = f"units.{index}"
        if dialect == "torchvision":
            # both branches give cout/2 channels; a stride-1 unit's main branch sees cout/2 of them
            main_in = cin if stride == 2 else cout // 2
            mid = main_out = cout // 2
            proj_out = cout // 2
        else:
            # Megvii: the shortcut keeps its cin channels, the main branch makes up the rest
            if stride == 2 and cout <= cin:
                raise ArchError(
                    f"Megvii-style ShuffleNet V2 needs each stage wider than its input ({cin} -> {cout} channels)"
                )
            main_in = cin if stride == 2 else cout // 2
            mid = cout // 2
            main_out = cout - main_in
            proj_out = cin
        proj = {}
        if stride == 2:
            proj = dict(
                proj_dw=ConvLayer(f"{name}.proj_dw", cin, cin, kernel=3, stride=2, padding=1, groups=cin),
                proj_pw=ConvLayer(f"{name}.proj_pw", cin, proj_out, relu=True),
            )
        units.append(
            V2Unit(
                name, cin, cout, stride,
                split=None if stride == 2 else ("halves" if dialect == "torchvision" else "interleaved"),
                shuffle_after=dialect == "torchvision",
                pw1=ConvLayer(f"{name}.pw1", main_in, mid, relu=True),
                dw=ConvLayer(f"{name}.dw", mid, mid, kernel=3, stride=stride, padding=1, groups=mid),
                pw2=ConvLayer(f"{name}.pw2", mid, main_out, relu=True),
                **proj,
            )
        )
    return units


def count_parameters(plan: Plan, dialect: str) -> int:
    """Parameters of the original (unfolded) network, counted as torch counts them: each conv's
    weight plus its BN's scale and shift, and the classifier (with a bias in the torchvision dialect)."""
    total = 0
    for layer in plan.convs():
        total += layer.out_channels * (layer.in_channels // layer.groups) * layer.kernel**2
        total += 2 * layer.out_channels  # BN gamma and beta
    c = plan.classifier
    total += c.num_classes * c.in_features
    if dialect == "torchvision":
        total += c.num_classes
    return total
