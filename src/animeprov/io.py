"""Image loading and validation: the one place holding every rule about reading images.

Everything that reads an image (dataset index, training data, prediction, HTTP upload) calls
`load_image`, and every fixed-size model input is cut by `make_views`. Rules, in order:

1. the source must be a readable, non-empty regular file (or non-empty bytes);
2. PIL must identify it as one of ACCEPTED_FORMATS, judged by content, never by extension;
3. width * height from the header must not exceed `LoadRules.max_pixels`, checked BEFORE decoding;
4. the first frame is fully decoded (truncated or corrupt data raises instead of giving grey pixels);
5. EXIF orientation is applied;
6. every colour mode becomes 8-bit RGB: 16-bit is scaled (divided by 257), never clipped, and alpha
   is composited on `LoadRules.alpha_background`.

Every refusal is an `ImageError` naming the file and the reason; every silent-looking change
(frame choice, orientation, bit depth, alpha, a PNG text chunk over PIL's 1 MB limit skipped) is written
into `LoadedImage.notes`.
Nothing here resizes, except `make_views(..., mode="resize")`, which must be asked for.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import math
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError

from animeprov.config import DEFAULT_ALPHA_BACKGROUND, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS

# PIL format ids we decode. An allow-list, because PIL can also open formats that run external
# programs (EPS via Ghostscript) or that we never test. APNG is "PNG"; multi-picture camera JPEGs
# come through the JPEG opener and are reported as "MPO".
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")

# Metadata is kept as evidence for later (e.g. a generator's 'parameters' chunk), not trusted or run.
MAX_METADATA_CHARS = 65_536  # ComfyUI workflows are tens of KB; longer values are cut
MAX_METADATA_ENTRIES = 100
_EXIF_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_EXIF_USER_COMMENT = 0x9286  # where A1111-style tools put generation parameters in JPEG/WebP
_EXIF_TEXT_TAGS = {
    0x010E: "ImageDescription",
    0x010F: "Make",
    0x0110: "Model",
    0x0131: "Software",
    0x013B: "Artist",
    0x8298: "Copyright",
}


class ImageError(ValueError):
    """An image that cannot be used, with the file (or upload name), a human-readable reason and a kind:
    "not-image" (the bytes are no accepted image format), "too-large" (pixel limit) or "unusable"
    (missing, empty, corrupt, truncated, unsupported mode, too small for the view). Callers such as the
    HTTP server map the kind to a status code; the reason is for people."""

    def __init__(self, path: str | os.PathLike, reason: str, kind: str = "unusable") -> None:
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keeps every field through pickling (e.g. DataLoader workers)
        return (type(self), (self.path, self.reason, self.kind))


def _check_colour(colour: tuple[int, int, int], what: str) -> None:
    if len(colour) != 3 or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in colour):
        raise ValueError(f"{what} must be three integers in 0..255, got {colour!r}")


@dataclass(frozen=True)
class LoadRules:
    """What load_image accepts. PIL refuses more than 2 * Image.MAX_IMAGE_PIXELS (~179 MP) by
    itself, so a max_pixels above that is capped there (we never change PIL's globals)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    alpha_background: tuple[int, int, int] = DEFAULT_ALPHA_BACKGROUND

    def __post_init__(self) -> None:
        if self.max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        _check_colour(self.alpha_background, "alpha_background")


@dataclass
class LoadedImage:
    path: str  # display name: the file path, or the name given with bytes
    pixels: np.ndarray  # (H, W, 3) uint8 RGB, C-contiguous, after orientation and mode conversion
    format: str  # as PIL reports it: "PNG", "JPEG", ...
    mode: str  # the original PIL mode, e.g. "P", "RGBA", "I;16"
    n_frames: int  # 1 for still images
    notes: list[str] = field(default_factory=list)  # what was done to the pixels, in words
    metadata: dict[str, str] = field(default_factory=dict)  # text chunks / EXIF strings, truncated

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_image(
    source: str | os.PathLike | bytes,
    rules: LoadRules = LoadRules(),
    *,
    name: str | None = None,
) -> LoadedImage:
    """Decode the first frame of an image file (or uploaded bytes) into 8-bit RGB, or raise ImageError.

    `name` is the display name used in errors and `LoadedImage.path` (default: the path, or "<bytes>").
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        display = name or "<bytes>"
        data = bytes(source)
        if not data:
            raise ImageError(display, "empty file (0 bytes)")
        return _decode(io.BytesIO(data), display, rules)
    path = os.fspath(source)
    display = name or path
    with _open_file(path, display) as stream:
        return _decode(stream, display, rules)


def _open_file(path: str, display: str) -> BinaryIO:
    """Open a regular, non-empty file for reading; every other case is an ImageError."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageError(display, "broken symbolic link (its target does not exist)") from None
        raise ImageError(display, "file not found") from None
    except OSError as error:
        raise ImageError(display, _os_reason(error)) from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(display, "is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        raise ImageError(display, f"not a regular file ({_file_kind(info.st_mode)})")
    if info.st_size == 0:
        raise ImageError(display, "empty file (0 bytes)")
    try:
        return open(path, "rb")
    except OSError as error:
        raise ImageError(display, _os_reason(error)) from None


def _os_reason(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return "permission denied"
    if error.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    return f"cannot read file ({error.strerror or error})"


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device"}
    return next((name for test, name in kinds.items() if test(mode)), "a special file")


class _OversizedPngText(Exception):
    """PIL refused a compressed PNG text chunk over its 1 MB limit (PngImagePlugin.MAX_TEXT_CHUNK)."""


def _decode(stream: BinaryIO, path: str, rules: LoadRules) -> LoadedImage:
    """`_decode_pixels`; a PNG whose only fault is a text chunk over PIL's 1 MB limit is decoded again
    without that chunk (metadata, not pixels), and the loss is noted."""
    try:
        return _decode_pixels(stream, path, rules)
    except _OversizedPngText:
        stream.seek(0)
        data, skipped = _without_big_png_text(stream.read())
    try:
        loaded = _decode_pixels(io.BytesIO(data), path, rules)
    except _OversizedPngText:  # e.g. many text chunks over PIL's total: refused, but not as "corrupt"
        raise ImageError(path, "PNG text chunks larger than the decoder accepts") from None
    limit = PngImagePlugin.MAX_TEXT_CHUNK
    loaded.notes += [f"PNG text chunk {key!r} over {limit:,} bytes skipped" for key in skipped]
    return loaded


def _without_big_png_text(data: bytes) -> tuple[bytes, list[str]]:
    """The PNG without its compressed text chunks (zTXt, iTXt) whose text exceeds PIL's limit, and their
    keys. Other chunks are copied byte for byte (each carries its own CRC)."""
    kept, skipped, position = [data[:8]], [], 8
    while position + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        end = position + 12 + length
        body = data[position + 8 : end - 4]
        if kind in (b"zTXt", b"iTXt") and _text_too_long(kind, body):
            skipped.append(body.split(b"\0", 1)[0].decode("latin-1"))
        else:
            kept.append(data[position:end])
        position = end
    kept.append(data[position:])
    return b"".join(kept), skipped


def _text_too_long(kind: bytes, body: bytes) -> bool:
    """Whether a zTXt/iTXt chunk inflates beyond PngImagePlugin.MAX_TEXT_CHUNK (PIL's own test)."""
    _, _, rest = body.partition(b"\0")
    if kind == b"zTXt":
        compressed = rest[1:]  # compression method byte, then the zlib stream
    else:  # iTXt: compressed flag, method, language \0, translated keyword \0, text
        parts = rest[2:].split(b"\0", 2)
        if rest[:1] != b"\x01" or len(parts) < 3:
            return False
        compressed = parts[2]
    inflater = zlib.decompressobj()
    try:
        inflater.decompress(compressed, PngImagePlugin.MAX_TEXT_CHUNK)
    except zlib.error:
        return False
    return bool(inflater.unconsumed_tail)


def _decode_pixels(stream: BinaryIO, path: str, rules: LoadRules) -> LoadedImage:
    """Header checks, full decode of the first frame, then orientation and colour conversion."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a global some code sets "to fix" errors; it hides corrupt files
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; animeprov needs it False")
    notes: list[str] = []
    with _pil_errors(path):
        image = _identify(stream, path)
        original_format, original_mode = image.format, image.mode
        _check_pixels(image, path, rules.max_pixels)
        n_frames = _count_frames(image)
        if n_frames > 1:
            notes.append(f"first of {n_frames} frames used")
        notes += _bit_depth_notes(image)  # reads the not-yet-decoded tile list, so before load()
        image.load()  # force the full decode now: truncated data must fail here, not later
        metadata = _read_metadata(image)
        if "icc_profile" in image.info:
            notes.append("embedded ICC colour profile not applied")
        image, orientation_notes = _apply_orientation(image)
        notes += orientation_notes
        pixels, colour_notes = _to_rgb(image, path, rules.alpha_background)
        notes += colour_notes
    return LoadedImage(
        path=path,
        pixels=np.ascontiguousarray(pixels, dtype=np.uint8),
        format=original_format,
        mode=original_mode,
        n_frames=n_frames,
        notes=notes,
        metadata=metadata,
    )


@contextlib.contextmanager
def _pil_errors(path: str) -> Iterator[None]:
    """Turn whatever PIL raises on bad input into an ImageError naming the file.

    PIL's DecompressionBombWarning is silenced only inside this block, because our own max_pixels
    check (from the header, before decoding) is the rule; PIL's global limits are never changed.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        except (ImageError, MemoryError):
            raise
        except Image.DecompressionBombError as error:
            raise ImageError(
                path, f"too many pixels, refused before decoding ({error})", kind="too-large"
            ) from None
        except Exception as error:  # PIL plugins raise many types on bad data: OSError, ValueError, ...
            if "MAX_TEXT_CHUNK" in str(error):  # metadata over PIL's limit, not bad pixels: see _decode
                raise _OversizedPngText from None
            reason = f"corrupt or truncated image data ({type(error).__name__}: {error})"
            raise ImageError(path, reason) from None


def _identify(stream: BinaryIO, path: str) -> Image.Image:
    """Read the header only; the format is decided by content, so a text file named x.png fails here."""
    try:
        return Image.open(stream, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        stream.seek(0)
        claimed = _format_from_signature(stream.read(16))
    if claimed:  # the right magic bytes, but PIL could not parse the header
        raise ImageError(path, f"corrupt or truncated image data (invalid {claimed} header)")
    accepted = ", ".join(ACCEPTED_FORMATS)
    raise ImageError(path, f"not a recognised image (accepted formats: {accepted})", kind="not-image")


def _format_from_signature(prefix: bytes) -> str | None:
    """Which accepted format the first bytes announce, to tell "corrupt PNG" from "not an image"."""
    signatures = {
        b"\x89PNG\r\n\x1a\n": "PNG",
        b"\xff\xd8\xff": "JPEG",
        b"GIF8": "GIF",
        b"BM": "BMP",
        b"II*\x00": "TIFF",
        b"MM\x00*": "TIFF",
    }
    if prefix.startswith(b"RIFF") and prefix[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in signatures.items() if prefix.startswith(magic)), None)


def _check_pixels(image: Image.Image, path: str, max_pixels: int) -> None:
    """Refuse decompression bombs from the header size, before any pixel is decoded."""
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(path, f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            path,
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(possible decompression bomb)",
            kind="too-large",
        )


def _count_frames(image: Image.Image) -> int:
    """Frames in an animation (GIF, APNG, WebP) or pages of a TIFF; PIL stays on frame 0."""
    return int(getattr(image, "n_frames", 1))


def _bit_depth_notes(image: Image.Image) -> list[str]:
    """PIL itself reduces 16-bit RGB(A) PNG/TIFF to 8 bits (keeping the high byte); say so."""
    if image.mode.startswith("I"):
        return []  # 16-bit greyscale stays 16-bit in PIL; _to_rgb scales it and notes it
    for tile in image.tile:
        args = tile[3]  # (codec, extents, offset, args): args is the rawmode or starts with it
        rawmode = args if isinstance(args, str) else (args or ("",))[0]
        if isinstance(rawmode, str) and ";16" in rawmode:
            return ["16-bit converted to 8-bit (high byte kept)"]
    return []


def _apply_orientation(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Rotate/flip as the EXIF orientation tag says, so pixels are upright as a viewer shows them."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # malformed EXIF must not make an otherwise good image unusable
        return image, ["EXIF unreadable; orientation not applied"]
    if orientation not in range(2, 9):
        return image, []
    return ImageOps.exif_transpose(image), [f"EXIF orientation {orientation} applied"]


def _to_rgb(image: Image.Image, path: str, background: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    """Any PIL mode -> (H, W, 3) uint8 RGB, with the conversion described in notes."""
    mode = image.mode
    if mode == "I" or mode.startswith("I;16"):
        grey = _sixteen_to_eight_bits(np.array(image), path)
        notes = ["16-bit converted to 8-bit (divided by 257)"]
        if "transparency" in image.info:
            notes.append("16-bit transparent colour key ignored")
        return np.repeat(grey[:, :, None], 3, axis=2), notes
    if mode == "F":
        raise ImageError(path, "32-bit floating-point images are not supported")
    notes = ["CMYK converted to RGB without colour management"] if mode == "CMYK" else []
    try:
        if _has_alpha(image):
            rgb, alpha_notes = _composite_alpha(np.array(image.convert("RGBA")), background)
            return rgb, notes + alpha_notes
        return np.array(image if mode == "RGB" else image.convert("RGB")), notes
    except ValueError:  # PIL cannot convert some rare modes (LAB, HSV) to RGB
        raise ImageError(path, f"unsupported colour mode {mode}") from None


def _sixteen_to_eight_bits(values: np.ndarray, path: str) -> np.ndarray:
    """0..65535 -> 0..255 by dividing by 257 (rounded), so 257 * k -> k and 65535 -> 255; never clips."""
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageError(path, "32-bit integer pixels outside 0..65535 are not supported")
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _has_alpha(image: Image.Image) -> bool:
    # 'transparency' covers palette images and RGB/L images with a transparent colour key (tRNS).
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _composite_alpha(rgba: np.ndarray, background: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    """Blend over a solid background: out = (rgb * a + bg * (255 - a)) / 255, rounded."""
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    if alpha.size == 0 or alpha.min() == 255:
        return rgba[:, :, :3], []  # fully opaque: nothing to blend
    # uint16 is enough: 255 * a + 255 * (255 - a) + 127 <= 65152.
    blended = rgba[:, :, :3] * alpha + np.array(background, np.uint16) * (255 - alpha)
    rgb = ((blended + 127) // 255).astype(np.uint8)
    return rgb, [f"alpha composited on {tuple(background)}"]


def _read_metadata(image: Image.Image) -> dict[str, str]:
    """Text PIL exposes (PNG tEXt/iTXt/zTXt, comments, XMP, EXIF text tags), each value truncated.

    Read after load(): PNG text chunks placed after the image data only appear then.
    """
    found: dict[str, str] = {}
    for key, value in image.info.items():
        if isinstance(value, str):
            found[str(key)] = str(value)  # str() also turns PIL's iTXt subclass into a plain str
        elif key in ("comment", "xmp") and isinstance(value, bytes):
            found[key] = value.decode("utf-8", errors="replace")
    found.update(_exif_text(image))
    return {
        key[:200]: _truncate(value.replace("\x00", ""))
        for key, value in list(found.items())[:MAX_METADATA_ENTRIES]
    }


def _exif_text(image: Image.Image) -> dict[str, str]:
    try:
        exif = image.getexif()
        tags = {f"EXIF:{name}": exif.get(tag) for tag, name in _EXIF_TEXT_TAGS.items()}
        tags["EXIF:UserComment"] = _user_comment(exif.get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT))
    except Exception:  # malformed EXIF is not our business here; the pixels are
        return {}
    return {key: value for key, value in tags.items() if isinstance(value, str) and value.strip("\x00 ")}


def _user_comment(value: object) -> str | None:
    """EXIF UserComment: 8 bytes naming the charset, then the text (UTF-16 of either byte order)."""
    if isinstance(value, str) or value is None:
        return value
    if not isinstance(value, bytes):
        return None
    charset, body = value[:8], value[8:]
    if charset.startswith(b"UNICODE"):
        # ASCII-heavy text has a zero high byte first in big-endian UTF-16.
        return body.decode("utf-16-be" if body[:1] == b"\x00" else "utf-16-le", errors="replace")
    return body.decode("utf-8", errors="replace")


def _truncate(text: str) -> str:
    if len(text) <= MAX_METADATA_CHARS:
        return text
    return text[:MAX_METADATA_CHARS] + f" ...[truncated {len(text) - MAX_METADATA_CHARS} chars]"


# ----------------------------------------------------------------------------------------------
# Views: fixed-size model inputs cut from the decoded pixels
# ----------------------------------------------------------------------------------------------

VIEW_MODES = ("crop", "tiles", "pad", "resize")


def make_views(
    pixels: np.ndarray,
    size: int,
    mode: str = "crop",
    *,
    path: str = "<image>",
    pad_value: tuple[int, int, int] = (255, 255, 255),
    max_tiles: int | None = None,
) -> list[np.ndarray]:
    """Fixed (size, size, 3) uint8 views of an image. Only mode="resize" resamples pixels.

    crop:   one centre crop; ImageError if the image is smaller than the view.
    tiles:  the tiles of the centred grid from `tile_grid` (at most `max_tiles`, spread over the image),
            row-major; ImageError if too small.
    pad:    pad with `pad_value` (centred) where smaller than the view, then centre crop.
    resize: shorter side resampled to `size` (bicubic), then centre crop. Destroys fingerprints.
    """
    _check_pixels_array(pixels)
    if size <= 0:
        raise ValueError(f"view size must be positive, got {size}")
    height, width = pixels.shape[:2]
    if mode == "crop":
        _require_view_fits(height, width, size, path)
        return [_centre_crop(pixels, size)]
    if mode == "tiles":
        _require_view_fits(height, width, size, path)
        return [
            pixels[top : top + size, left : left + size].copy()
            for top, left in tile_grid(height, width, size, max_tiles)
        ]
    if mode == "pad":
        _check_colour(pad_value, "pad_value")
        return [_centre_crop(_pad_to(pixels, size, pad_value), size)]
    if mode == "resize":
        return [_centre_crop(_resize_shorter_side(pixels, size), size)]
    raise ValueError(f"unknown view mode {mode!r}; choose one of {', '.join(VIEW_MODES)}")


def tile_grid(height: int, width: int, size: int, max_tiles: int | None = None) -> list[tuple[int, int]]:
    """(top, left) corners of the non-overlapping size x size tiles, row-major.

    floor(height / size) x floor(width / size) tiles; the grid is centred, so the uncovered margin
    is split evenly (the extra pixel, if odd, goes to the bottom/right). Empty if the image is too small.
    With `max_tiles`, a grid of more tiles keeps a sub-grid of at most that many (`spread_grid`): rows and
    columns evenly spaced from edge to edge, so the kept tiles still cover the whole picture.
    """
    if size <= 0:
        raise ValueError(f"tile size must be positive, got {size}")
    if max_tiles is not None and max_tiles < 1:
        raise ValueError(f"max_tiles must be at least 1, got {max_tiles}")
    rows, cols = height // size, width // size
    top0, left0 = (height - rows * size) // 2, (width - cols * size) // 2
    kept_rows, kept_cols = range(rows), range(cols)
    if max_tiles is not None and rows * cols > max_tiles:
        kept_rows, kept_cols = spread_grid(rows, cols, max_tiles)
    return [(top0 + r * size, left0 + c * size) for r in kept_rows for c in kept_cols]


def spread_grid(rows: int, cols: int, max_tiles: int) -> tuple[list[int], list[int]]:
    """The rows and columns of the largest sub-grid of a rows x cols grid with at most `max_tiles` cells,
    its shape closest to the grid's (ties), each index list evenly spaced from the first to the last."""

    def mismatch(shape: tuple[int, int]) -> float:
        return abs(math.log(shape[0] / shape[1]) - math.log(rows / cols))

    shapes = [(r, min(cols, max_tiles // r)) for r in range(1, min(rows, max_tiles) + 1)]
    kept_rows, kept_cols = max(shapes, key=lambda shape: (shape[0] * shape[1], -mismatch(shape)))

    def spread(n: int, kept: int) -> list[int]:
        return [round(i * (n - 1) / (kept - 1)) for i in range(kept)] if kept > 1 else [(n - 1) // 2]

    return spread(rows, kept_rows), spread(cols, kept_cols)


def _check_pixels_array(pixels: np.ndarray) -> None:
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")


def _require_view_fits(height: int, width: int, size: int, path: str) -> None:
    if height < size or width < size:
        raise ImageError(
            path,
            f"{width}x{height} image is smaller than the {size}x{size} view; use --view pad to pad it "
            "(no resampling) or --view resize to resample it (destroys generator fingerprints)",
        )


def _centre_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return pixels[top : top + size, left : left + size].copy()  # a copy: views never alias the input


def _pad_to(pixels: np.ndarray, size: int, pad_value: tuple[int, int, int]) -> np.ndarray:
    """Grow each side shorter than `size` to `size`, image centred, new pixels = pad_value."""
    height, width = pixels.shape[:2]
    if height >= size and width >= size:
        return pixels
    out_h, out_w = max(height, size), max(width, size)
    out = np.empty((out_h, out_w, 3), np.uint8)
    out[:] = np.array(pad_value, np.uint8)
    top, left = (out_h - height) // 2, (out_w - width) // 2
    out[top : top + height, left : left + width] = pixels
    return out


def _resize_shorter_side(pixels: np.ndarray, size: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    if min(height, width) == size:
        return pixels  # already the right scale: resampling would be the identity
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = Image.fromarray(pixels).resize((new_w, new_h), Image.Resampling.BICUBIC)
    return np.array(resized)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def iter_image_files(
    paths: Iterable[str | Path],
    recursive: bool = True,
    on_skip: Callable[[Path, str], None] | None = None,
) -> Iterator[Path]:
    """Files are yielded as given; folders are walked for config.IMAGE_EXTENSIONS (any case).

    Folders are walked lazily, depth first, entries sorted by name, so the order is deterministic
    (it equals sorting the found paths) and memory stays flat however many files there are. Hidden
    entries (names starting with ".", e.g. macOS "._x.png" resource forks) and symlinked folders
    (loops) are skipped inside folders. Every other entry with an image extension is yielded, whatever
    it is (a dangling or looping symlink, a FIFO, ...): the loader then reports it with its reason, as
    when it is given by name, instead of it being dropped silently. A folder that cannot be listed
    (permission denied, ...) is passed to `on_skip(folder, reason)` and the walk goes on (a warning
    without `on_skip`). All given paths are checked first: a missing one raises FileNotFoundError
    before anything is yielded.
    """
    given = [Path(p) for p in paths]
    for path in given:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
    report = on_skip if on_skip is not None else _warn_skipped
    for path in given:
        if path.is_dir():
            yield from _walk(path, recursive, report)
        else:
            yield path


def _warn_skipped(folder: Path, reason: str) -> None:
    warnings.warn(f"{folder}: {reason}", stacklevel=3)


def _walk(folder: Path, recursive: bool, on_skip: Callable[[Path, str], None]) -> Iterator[Path]:
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as error:  # permission denied, vanished, I/O error: this folder only
        on_skip(folder, f"cannot list this folder ({error.strerror or error}); files in it were skipped")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_folder = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_folder = False
        if is_folder:
            if recursive:
                yield from _walk(Path(entry.path), recursive, on_skip)
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
            yield Path(entry.path)


def read_file(path: str | os.PathLike, name: str | None = None) -> bytes:
    """The bytes of a regular, non-empty file, or the ImageError load_image would raise (a FIFO never
    blocks, a dangling symlink or a folder is named as such)."""
    path = os.fspath(path)
    with _open_file(path, name or path) as stream:
        return stream.read()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (constant memory)."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()
