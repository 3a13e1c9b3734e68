"""Image files on disk: decoding to RGB, cheap integrity checks, a resize cache and a file-backed split.

Large source images (fundus photographs, dermoscopy) are decoded and resized once and kept as small
PNGs, so that DataLoader workers later decode a few hundred kilobytes per image instead of megabytes.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..protocol.atomic import atomic_write_bytes, atomic_write_text
from .base import DataError, Split, TensorSplit

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".pbm", ".pgm", ".ppm", ".pnm")  # what Pillow reads as one picture (a GIF: its first frame)
CACHE_VERSION = 1  # part of every cache key: bump when the resize changes
CACHE_ABOVE = 2  # sources larger than CACHE_ABOVE × the target size are resized once and cached
FALLBACK_CACHE_ROOT = Path(__file__).resolve().parents[2] / "datasets" / ".cache"
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # Pillow opens some 16-bit files as "I"
DECODED_LIST = "decoded.txt"  # in the cache folder: sources that once decoded in full, one key a line


def describe(names: Sequence[object], limit: int = 5) -> str:
    """``a, b, c, d, e and 7 more``: the first offenders of a problem, short enough for one line."""
    shown = ", ".join(str(n) for n in list(names)[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: grey is replicated, alpha dropped, 16-bit scaled (not clipped)."""
    if img.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(img, dtype=np.float32) / 257.0
        img = Image.fromarray(wide.clip(0, 255).round().astype(np.uint8), "L")
    elif img.mode == "P":  # via RGBA, so a transparency entry in the palette is understood
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_rgb(path: Path, size: int | None = None) -> Image.Image:
    """Decode ``path`` as RGB, resized to ``size``×``size`` when given (the whole picture is kept:
    no crop, so masks drawn on the full image stay aligned). JPEGs are decoded at a reduced scale
    when that still leaves at least twice the target size, which is much faster for large files."""
    with Image.open(path) as img:
        if size is not None and img.format == "JPEG":
            img.draft("RGB", (2 * size, 2 * size))
        img = to_rgb(img)
        img.load()
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return img


def image_bytes(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 C×H×W."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def image_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 C×H×W in [0, 1] (as a TensorSplit of ``image_bytes`` gives it)."""
    return image_bytes(img).float().div_(255)


def png_bytes(image: torch.Tensor) -> bytes:
    """A C×H×W image in [0, 1] as PNG bytes (grey for one channel)."""
    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr[:, :, :3]).save(buf, format="PNG")
    return buf.getvalue()


def load_mask(path: Path, size: int) -> torch.Tensor:
    """A relevance mask file as a bool ``size``×``size`` tensor: nonzero pixels (any colour channel;
    alpha ignored) are the ones the model must not rely on. A target pixel is marked when at least
    half of the source area it covers is marked."""
    with Image.open(path) as img:
        if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
            marked = np.asarray(img.convert("RGB")).any(axis=-1)
        elif img.mode in ("LA", "PA"):
            marked = np.asarray(img.convert("L")) != 0
        else:
            marked = np.asarray(img) != 0
    area = Image.fromarray(marked.astype(np.uint8) * 255, "L").resize((size, size), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(area) >= 128)


def _digest(text: str) -> str:
    """16 hex digits of the text's SHA-1, from the name's own bytes (file names need not be UTF-8)."""
    return hashlib.sha1(os.fsencode(text)).hexdigest()[:16]


@dataclass
class _Checked:
    """What preparing one source image found: where to read it from, its size, or what is wrong."""

    read_from: Path | None = None
    size: tuple[int, int] | None = None
    problem: str | None = None
    decoded: str | None = None  # the source's key, when this check decoded it in full


class ImageStore:
    """Decodes every source image in full once and keeps resized copies of large ones.

    The cache lives in ``<root>/.hitl-cache/<size>/`` beside the data; where that folder cannot be
    written (a read-only data set) it lives under ``datasets/.cache/`` in this repository. Cache files
    are named by the source's relative path, byte size and modification time, so an edited source is
    decoded again; they are written through the project's atomic writer, so a crash never leaves half
    a file. Small sources are read directly; the keys of those that decoded in full are listed in
    ``decoded.txt`` there, so later builds only open their headers.
    """

    def __init__(self, root: Path, size: int):
        self.root = root.resolve()
        self.size = size
        tag = hashlib.sha1(str(self.root).encode()).hexdigest()[:10]
        self.cache_dirs = [self.root / ".hitl-cache" / str(size),
                           FALLBACK_CACHE_ROOT / f"{self.root.name}-{tag}" / str(size)]
        self._writable: Path | None = None
        self._decoded = self._read_decoded()

    def display_name(self, path: Path) -> str:
        """The path relative to the data folder where it is inside it (shorter error messages)."""
        try:
            return str(path.resolve().relative_to(self.root))
        except ValueError:
            return str(path)

    def _source_id(self, path: Path) -> str:
        """Changes when the file is edited: its relative path, byte size and modification time."""
        st = path.stat()
        return f"{self.display_name(path)}|{st.st_size}|{st.st_mtime_ns}"

    def _cache_name(self, path: Path, source_id: str) -> str:
        return f"{path.stem}-{_digest(f'{source_id}|{self.size}|v{CACHE_VERSION}')}.png"

    def _read_decoded(self) -> set[str]:
        decoded: set[str] = set()
        for d in self.cache_dirs:
            try:
                decoded.update((d / DECODED_LIST).read_text().split())
            except (OSError, UnicodeDecodeError):
                continue
        return decoded

    def _add_decoded(self, keys: set[str]) -> None:
        """Remember newly decoded sources; where no cache folder is writable they are decoded again next
        time, which costs time but is not an error."""
        if keys - self._decoded:
            self._decoded |= keys
            try:
                atomic_write_text(self._writable_dir() / DECODED_LIST, "\n".join(sorted(self._decoded)) + "\n")
            except (DataError, OSError):
                pass

    def _cached(self, name: str) -> Path | None:
        return next((d / name for d in self.cache_dirs if (d / name).is_file()), None)

    def _writable_dir(self) -> Path:
        if self._writable is None:
            for d in self.cache_dirs:
                try:
                    d.mkdir(parents=True, exist_ok=True)
                    probe = d / f".probe-{uuid.uuid4().hex}"
                    probe.touch()
                    probe.unlink()
                    self._writable = d
                    break
                except OSError:
                    continue
            else:
                raise DataError(f"cannot write an image cache in {self.cache_dirs[0]} or {self.cache_dirs[1]}")
        return self._writable

    def _write_cache(self, img: Image.Image, name: str) -> Path:
        target = self._writable_dir() / name
        png = io.BytesIO()
        img.save(png, format="PNG", compress_level=1)
        try:
            atomic_write_bytes(target, png.getvalue())
        except OSError as e:
            raise DataError(f"cannot write the image cache {target}: {e}") from e
        return target

    def _check(self, path: Path) -> _Checked:
        """Open the header (size); decode in full what has not been decoded before: a large image is
        resized and cached, a small one's key is remembered. Damage anywhere in a file (a truncated
        end, a corrupt data stream behind an intact end marker) fails here, not in the first batch."""
        try:
            with Image.open(path) as img:
                size = img.size
            source_id = self._source_id(path)
            key = _digest(source_id)
            large = max(size) > CACHE_ABOVE * self.size
            if large:
                name = self._cache_name(path, source_id)
                cached = self._cached(name)
                if cached is not None:
                    return _Checked(cached, size)
                resized = load_rgb(path, self.size)
            elif key in self._decoded:
                return _Checked(path, size)
            else:
                load_rgb(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            reason = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
            return _Checked(problem=f"{self.display_name(path)} ({reason})")
        if large:
            return _Checked(self._write_cache(resized, name), size)
        return _Checked(path, size, decoded=key)

    def prepare(self, what: str, paths: Sequence[Path]) -> tuple[list[Path], list[tuple[int, int]]]:
        """For each source: the file to read it from (a cached copy or itself) and its original size.

        Raises DataError naming the unreadable or truncated files; checks run in threads (PIL releases
        the GIL while decoding)."""
        workers = min(16, os.cpu_count() or 1)
        if len(paths) > 50:
            log.info("%s: checking %d images (resizing large ones to %d px once)", what, len(paths), self.size)
        with ThreadPoolExecutor(workers) as pool:
            checked = list(pool.map(self._check, paths))
        self._add_decoded({c.decoded for c in checked if c.decoded})
        bad = [c.problem for c in checked if c.problem]
        if bad:
            raise DataError(f"{what}: {len(bad)} unreadable or truncated image(s): {describe(bad)}")
        return [c.read_from for c in checked], [c.size for c in checked]

    def check_masks(self, what: str, masks: Sequence[Path | None], image_sizes: Sequence[tuple[int, int]]) -> None:
        """Every mask must open and have its image's size, or it would mark the wrong pixels."""
        bad = []
        for mask, image_size in zip(masks, image_sizes):
            if mask is None:
                continue
            try:
                with Image.open(mask) as img:
                    mask_size = img.size
            except (OSError, ValueError, SyntaxError) as e:
                bad.append(f"{self.display_name(mask)} ({str(e)[:60]})")
                continue
            if mask_size != image_size:
                bad.append(f"{self.display_name(mask)} ({mask_size[0]}×{mask_size[1]}, "
                           f"image {image_size[0]}×{image_size[1]})")
        if bad:
            raise DataError(f"{what}: {len(bad)} mask(s) unreadable or not the size of their image: {describe(bad)}")


class FileSplit(Split):
    """A split read from files: ``split[i]`` decodes one image (in the DataLoader worker that asks
    for it) at ``image_size``×``image_size``. ``sources`` are the original files (for messages and
    display); ``files`` what is actually read (the cached copy of a large source)."""

    in_memory = False

    def __init__(self, name: str, files: Sequence[Path], labels: torch.Tensor, image_size: int,
                 sources: Sequence[Path], masks: Sequence[Path | None] | None = None):
        self.name = name
        self.files = list(files)
        self.sources = list(sources)
        self.labels = torch.as_tensor(labels).long()
        self.image_size = image_size
        self.masks = None if masks is None else list(masks)

    def __getitem__(self, i):
        i = int(i)
        return self.decode(i).float().div_(255), int(self.labels[i]), i

    def decode(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 C×H×W."""
        try:
            img = load_rgb(self.files[i], self.image_size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image {self.sources[i]}: {str(e)[:80]}") from e
        return image_bytes(img)

    @property
    def decoded_bytes(self) -> int:
        """The memory ``to_memory`` takes: uint8 images, and bool masks where the split has them."""
        pixels = self.image_size * self.image_size
        return len(self) * pixels * (3 + (self.masks is not None))

    def to_memory(self) -> TensorSplit:
        """Every image decoded once (in threads: PIL releases the GIL) into a TensorSplit that gives the
        same tensors, the masks with them."""
        n, size = len(self), self.image_size
        images = torch.empty((n, 3, size, size), dtype=torch.uint8)
        masks = None if self.masks is None else torch.empty((n, size, size), dtype=torch.bool)

        def put(i: int) -> None:
            images[i] = self.decode(i)
            if masks is not None:
                masks[i] = self.gt_mask(i)

        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(put, range(n)))
        return TensorSplit(self.name, images, self.labels, masks)

    def gt_mask(self, i: int) -> torch.Tensor | None:
        """The marked pixels of image ``i`` (bool, image size); all False for an image listed without a
        mask file (nothing to avoid), None when the data set has no masks at all."""
        if self.masks is None:
            return None
        mask = self.masks[int(i)]
        if mask is None:
            return torch.zeros(self.image_size, self.image_size, dtype=torch.bool)
        try:
            return load_mask(mask, self.image_size)
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"cannot read mask {mask}: {str(e)[:80]}") from e

    @property
    def has_gt_masks(self) -> bool:
        return self.masks is not None
