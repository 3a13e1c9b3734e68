"""Generated data sets with a known confounder, so feedback can be simulated and its effect measured.

Both sets put a coloured corner patch on every image. In train and validation its colour encodes the
label (a shortcut the model happily takes); in ``test`` the colour is random (decorrelated), and in
``test_consistent`` the same test images carry the label's colour. The ground-truth mask of every
image is the patch: exactly what a person would mark as "must not rely on".

With the data-set option ``confounded: false`` the patch colour is random in train and validation
too: the unconfounded reference a benchmark compares against.

synthetic-lesions has more options, so that nothing is fitted to one shape of shortcut:
``sticker: anywhere`` puts the patch at a random place (not only a corner); ``sticker_share: p`` keeps
the artefact on a random share p of the images only (the rest have none, and an empty ground-truth
mask); ``artefact: ruler`` replaces the sticker with a thin ruler along a random edge (a bar with
ticks), ``artefact: text`` with a text-like label in a random corner (3 to 5 random glyphs; its strokes
are painted, its box is the ground-truth mask, as a person would mark it); ``second_artefact: KIND``
adds a second artefact of another kind in colours of its own (magenta and cyan by class), the
ground-truth mask covering both. All leave the default set (and its cache) exactly as it was.

Generated once per setting under ``datasets/<name>/`` and cached; deterministic by seed.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..protocol.atomic import atomic_write_bytes
from .base import DataError, DataRequest, DataSplits, TensorSplit
from .splits import stratified_fraction

DATA_ROOT = Path(__file__).resolve().parents[2] / "datasets"
CACHE_VERSION = 3

# Ten well-separated colours (RGB in [0, 1]) for the patch.
PALETTE = torch.tensor([
    [0.90, 0.10, 0.10], [0.10, 0.70, 0.10], [0.15, 0.30, 0.95], [0.95, 0.85, 0.10], [0.85, 0.15, 0.85],
    [0.10, 0.85, 0.85], [1.00, 0.55, 0.00], [0.55, 0.25, 0.05], [1.00, 1.00, 1.00], [0.00, 0.00, 0.00],
])


def _corner_patch(n: int, size: int, patch: int, g: torch.Generator) -> torch.Tensor:
    """Bool masks (n×size×size) of a patch×patch square in a random corner, 1 px from the edge."""
    corner = torch.randint(0, 4, (n,), generator=g)
    ys = torch.where(corner // 2 == 0, 1, size - 1 - patch)
    xs = torch.where(corner % 2 == 0, 1, size - 1 - patch)
    r = torch.arange(size)
    rows = (r[None, :] >= ys[:, None]) & (r[None, :] < (ys + patch)[:, None])
    cols = (r[None, :] >= xs[:, None]) & (r[None, :] < (xs + patch)[:, None])
    return rows[:, :, None] & cols[:, None, :]


def _anywhere_patch(n: int, size: int, patch: int, g: torch.Generator) -> torch.Tensor:
    """Bool masks (n×size×size) of a patch×patch square at a random place, at least 1 px from the edge."""
    ys = torch.randint(1, size - patch, (n,), generator=g)
    xs = torch.randint(1, size - patch, (n,), generator=g)
    r = torch.arange(size)
    rows = (r[None, :] >= ys[:, None]) & (r[None, :] < (ys + patch)[:, None])
    cols = (r[None, :] >= xs[:, None]) & (r[None, :] < (xs + patch)[:, None])
    return rows[:, :, None] & cols[:, None, :]


def _ruler(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Bool masks (n×size×size) of a thin ruler along a random edge, 1 px from it: a bar max(2, size/32)
    px thick over 60-90% of the side, with ticks twice as long every size/10 px."""
    thick, every = max(2, size // 32), max(4, size // 10)
    edge = torch.randint(0, 4, (n,), generator=g)
    length = (size * (0.6 + 0.3 * torch.rand(n, generator=g))).long()
    start = 1 + (torch.rand(n, generator=g) * (size - 2 - length).float()).long()
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        along = torch.arange(int(start[i]), int(start[i] + length[i]))
        ruler = torch.zeros(size, size, dtype=torch.bool)
        ruler[1:1 + thick, along] = True
        ruler[1 + thick:1 + 3 * thick, along[(along - start[i]) % every == 0]] = True
        masks[i] = torch.rot90(ruler, int(edge[i]), (0, 1))
    return masks


def _text(n: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A text-like label in a random corner: 3 to 5 random 3×5 glyphs (scaled with the image) in a row.
    Bool masks (n×size×size) of its strokes, which are painted, and of its box with a pixel round it,
    which is what a person marks."""
    scale = max(1, size // 64)
    gh, gw, gap = 5 * scale, 3 * scale, scale
    count = torch.randint(3, 6, (n,), generator=g)
    corner = torch.randint(0, 4, (n,), generator=g)
    glyphs = torch.rand(n, 5, 5, 3, generator=g) < 0.55
    strokes = torch.zeros(n, size, size, dtype=torch.bool)
    boxes = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        k = int(count[i])
        width = k * (gw + gap) - gap
        y0 = 2 if corner[i] // 2 == 0 else size - 2 - gh
        x0 = 2 if corner[i] % 2 == 0 else size - 2 - width
        for j in range(k):
            glyph = glyphs[i, j].repeat_interleave(scale, 0).repeat_interleave(scale, 1)
            strokes[i, y0:y0 + gh, x0 + j * (gw + gap):x0 + j * (gw + gap) + gw] = glyph
        boxes[i, y0 - 1:y0 + gh + 1, x0 - 1:x0 + width + 1] = True
    return strokes, boxes


def _paint(images: torch.Tensor, masks: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Images (float n×3×H×W) with the masked pixels set to each image's colour."""
    m = masks[:, None].float()
    return images * (1 - m) + colours[:, :, None, None] * m


def _paint_parts(images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, parts: dict,
                 colours: torch.Tensor, confounded: bool, g: torch.Generator,
                 layers: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None) -> dict:
    """The cached splits: each part's images with its patch painted in the label's colour (train and
    validation, when confounded) or a random one (test, and everything when not), plus the test
    images in the label's colour (``test_consistent``). ``layers``: (painted pixels, colours) per
    artefact, painted in turn, where what is painted is not the whole ground-truth mask (text strokes
    inside the box a person marks) or there are two artefacts; default: ``masks`` in ``colours``."""
    data: dict = {"image_size": images.shape[-1], "version": CACHE_VERSION}
    for part, idx in parts.items():
        y = labels[idx]
        painted, consistent = images[idx], images[idx]
        for paint, palette in layers or ((masks, colours),):
            random_colour = palette[torch.randint(0, len(palette), (len(y),), generator=g)]
            colour = palette[y] if confounded and part != "test" else random_colour
            painted = _paint(painted, paint[idx], colour)
            consistent = _paint(consistent, paint[idx], palette[y])
        data[f"{part}_images"] = _to_uint8(painted)
        data[f"{part}_labels"] = y
        data[f"{part}_masks"] = masks[idx]
        if part == "test":
            data["test_images_consistent"] = _to_uint8(consistent)
    return data


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _cached(name: str, key: str, make) -> dict:
    """The generated set from ``datasets/<name>/<key>.pt``, made and saved first if absent. Never draws
    from the global torch generator: the trainer seeds it before building the data and creates the
    model after, so the initial weights must not depend on whether the cache existed."""
    path = DATA_ROOT / name / f"{key}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a damaged cache is regenerated, never trusted
            path.unlink(missing_ok=True)
    data = make()
    buffer = io.BytesIO()
    torch.save(data, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return data


def _splits_from(data: dict, request: DataRequest, class_names: list[str], description: str) -> DataSplits:
    def split(prefix: str, name: str, images_key: str = "images") -> TensorSplit:
        return TensorSplit(name, data[f"{prefix}_{images_key}"], data[f"{prefix}_labels"], data[f"{prefix}_masks"])

    notes: list[str] = []
    train, val = split("train", "train"), split("val", "val")
    train = train.subset(stratified_fraction(train.labels, request.train_fraction, request.seed, "train", notes))
    val = val.subset(stratified_fraction(val.labels, request.val_fraction, request.seed + 1, "validation", notes))
    test = split("test", "test")
    consistent = split("test", "test_consistent", "images_consistent")
    return DataSplits(train=train, val=val, test=test, test_consistent=consistent,
                      class_names=class_names, in_chans=3, image_size=data["image_size"],
                      description=description, notes=notes)


def _confounded(request: DataRequest) -> bool:
    value = request.options.get("confounded", True)
    if not isinstance(value, bool):
        raise DataError(f"option confounded must be true or false, got {value!r}")
    return value


# --------------------------------------------------------------------------- decoy digits

def make_decoy_digits(image_size: int, seed: int, confounded: bool = True,
                      noise: float = 0.3, contrast: float = 0.5) -> dict:
    """scikit-learn's 1,797 bundled 8×8 digits, upscaled, half contrast, Gaussian noise, with a
    label-coloured corner patch (random colour in test). 1,000 train / 297 val / 500 test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    g = torch.Generator().manual_seed(seed)
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    n = len(y)
    inner = round(image_size * 0.75)
    glyph = F.interpolate(x, size=(inner, inner), mode="bilinear", align_corners=False)
    canvas = torch.zeros(n, 1, image_size, image_size)
    off = (image_size - inner) // 2
    canvas[:, :, off:off + inner, off:off + inner] = glyph
    base = 0.5 - contrast / 2 + contrast * canvas.expand(n, 3, image_size, image_size)
    base = base + noise * torch.randn(base.shape, generator=g)
    patch = max(2, round(6 * image_size / 32))
    masks = _corner_patch(n, image_size, patch, g)

    order = torch.randperm(n, generator=g)
    parts = {"train": order[:1000], "val": order[1000:1297], "test": order[1297:]}
    return _paint_parts(base, y, masks, parts, PALETTE, confounded, g)


def build_decoy_digits(request: DataRequest) -> DataSplits:
    size = request.image_size or 32
    if not 16 <= size <= 224:
        raise DataError(f"decoy-digits: --image-size must be between 16 and 224, got {size}")
    confounded = _confounded(request)
    data = _cached("decoy-digits", f"s{size}_seed{request.seed}{'' if confounded else '_clean'}_v{CACHE_VERSION}",
                   lambda: make_decoy_digits(size, request.seed, confounded))
    return _splits_from(data, request, [str(i) for i in range(10)],
                        "scikit-learn digits with a label-coloured corner patch (decoy)")


# --------------------------------------------------------------------------- synthetic lesions

ARTEFACTS = ("sticker", "ruler", "text")


def _artefact(kind: str, sticker: torch.Tensor, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(painted pixels, ground-truth mask) of one artefact per image: the sticker already drawn, a ruler
    or a text label."""
    if kind == "ruler":
        ruler = _ruler(len(sticker), size, g)
        return ruler, ruler
    if kind == "text":
        return _text(len(sticker), size, g)
    return sticker, sticker


def make_lesions(image_size: int, seed: int, n: int = 1600, confounded: bool = True, sticker: str = "corner",
                 sticker_share: float = 1.0, artefact: str = "sticker", second: str | None = None) -> dict:
    """Skin-coloured images with one brown lesion each. Class ``irregular`` has a wavy, notched
    border (the real feature); class ``regular`` a smooth elliptical one. A coloured calibration
    patch in a corner, like those in dermoscopy sets, encodes the class in train and validation."""
    g = torch.Generator().manual_seed(seed)
    s = image_size
    labels = torch.arange(n) % 2
    labels = labels[torch.randperm(n, generator=g)]

    def u(lo, hi, shape=(n,)):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    yy, xx = coords[None, :, None], coords[None, None, :]
    cy, cx = u(0.38, 0.62)[:, None, None], u(0.38, 0.62)[:, None, None]
    radius = u(0.17, 0.26)[:, None, None]
    aspect = u(0.8, 1.25)[:, None, None]
    dy, dx = (yy - cy) * aspect, (xx - cx) / aspect
    dist = torch.sqrt(dy ** 2 + dx ** 2)
    theta = torch.atan2(dy, dx)
    freq = torch.randint(5, 9, (n,), generator=g)[:, None, None].float()
    phase = u(0, 2 * math.pi)[:, None, None]
    amplitude = torch.where(labels == 1, u(0.08, 0.14), u(0.0, 0.04))[:, None, None]
    border = radius * (1 + amplitude * torch.sin(freq * theta + phase))
    lesion = torch.sigmoid((border - dist) * s / 1.5)  # soft edge, about 1.5 px

    skin = torch.stack([u(0.80, 0.95), u(0.60, 0.75), u(0.50, 0.65)], 1)[:, :, None, None]
    brown = torch.stack([u(0.35, 0.50), u(0.20, 0.30), u(0.10, 0.20)], 1)[:, :, None, None]
    img = skin * (1 - lesion[:, None]) + brown * lesion[:, None]
    img = img + 0.10 * torch.randn(img.shape, generator=g)
    patch = max(3, round(s / 5))
    masks = _corner_patch(n, s, patch, g)
    if sticker == "anywhere":  # drawn after everything else: the default set stays as it was
        masks = _anywhere_patch(n, s, patch, g)
    if sticker_share < 1:
        masks[torch.rand(n, generator=g) >= sticker_share] = False

    n_train, n_val = int(n * 0.625), int(n * 0.125)
    parts = {"train": slice(0, n_train), "val": slice(n_train, n_train + n_val), "test": slice(n_train + n_val, n)}
    patch_colour = PALETTE[[2, 6]]  # blue sticker for regular, orange for irregular
    if artefact == "sticker" and second is None:  # the default set, drawn exactly as before
        return _paint_parts(img, labels, masks, parts, patch_colour, confounded, g)
    # other shapes are drawn after everything else, so the lesions are those of the default set
    layers = [_artefact(artefact, masks, s, g)]
    if second is not None:  # a second artefact of another kind, in colours of its own
        layers.append(_artefact(second, _corner_patch(n, s, patch, g), s, g))
    if sticker_share < 1:  # the same images carry no artefact
        bare = ~masks.flatten(1).any(1)
        for paint, truth in layers:
            paint[bare] = False
            truth[bare] = False
    truth = torch.stack([t for _, t in layers]).any(0)
    palettes = (patch_colour, PALETTE[[4, 5]])  # magenta / cyan for a second artefact
    return _paint_parts(img, labels, truth, parts, patch_colour, confounded, g,
                        layers=tuple((paint, palettes[i]) for i, (paint, _) in enumerate(layers)))


def build_lesions(request: DataRequest) -> DataSplits:
    size = request.image_size or 64
    if not 64 <= size <= 224:
        raise DataError(f"synthetic-lesions: --image-size must be between 64 and 224, got {size}")
    n = int(request.options.get("n_images", 1600))
    confounded = _confounded(request)
    sticker = request.options.get("sticker", "corner")
    if sticker not in ("corner", "anywhere"):
        raise DataError(f"option sticker must be corner or anywhere, got {sticker!r}")
    share = request.options.get("sticker_share", 1.0)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise DataError(f"option sticker_share must be a number in (0, 1], got {share!r}")
    artefact = request.options.get("artefact", "sticker")
    second = request.options.get("second_artefact")
    if artefact not in ARTEFACTS:
        raise DataError(f"option artefact must be one of {', '.join(ARTEFACTS)}, got {artefact!r}")
    if second is not None and (second not in ARTEFACTS or second == artefact):
        raise DataError(f"option second_artefact must be another of {', '.join(ARTEFACTS)}, got {second!r}")
    variant = (("" if sticker == "corner" else "_anywhere") + ("" if share == 1 else f"_share{share:g}")
               + ("" if artefact == "sticker" else f"_{artefact}") + (f"_and_{second}" if second else ""))
    data = _cached("synthetic-lesions",
                   f"s{size}_n{n}_seed{request.seed}{'' if confounded else '_clean'}{variant}_v{CACHE_VERSION}",
                   lambda: make_lesions(size, request.seed, n, confounded, sticker, float(share), artefact, second))
    return _splits_from(data, request, ["regular", "irregular"],
                        "synthetic skin lesions; border shape is the class, a corner sticker the confounder")


SYNTHETIC_BUILDERS = {"decoy-digits": build_decoy_digits, "synthetic-lesions": build_lesions}
