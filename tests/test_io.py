"""animeprov.io: every image is built here with PIL/numpy in tmp_path; references are PIL's own decoders."""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from animeprov.config import DEFAULT_ALPHA_BACKGROUND
from animeprov.io import (
    MAX_METADATA_CHARS,
    VIEW_MODES,
    ImageError,
    LoadedImage,
    LoadRules,
    iter_image_files,
    load_image,
    make_views,
    read_file,
    sha256_file,
    tile_grid,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """Gradients survive JPEG with a small error, unlike noise."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 64 * 4], -1
    ).astype(np.uint8)


def save(path: Path, image: Image.Image, fmt: str | None = None, **options) -> Path:
    image.save(path, fmt, **options)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(
    width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None = None
) -> bytes:
    """A PNG written byte by byte (PIL cannot write 16-bit RGB, and bombs need only a header)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(rows) if rows is not None else zlib.compress(b"\0" * 16)  # tiny, wrong on purpose
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def load_reason(source, **kwargs) -> str:
    with pytest.raises(ImageError) as caught:
        load_image(source, **kwargs)
    return caught.value.reason


# ----------------------------------------------------------------------------------------------
# Accepted formats
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "options"),
    [
        (".png", {}),
        (".bmp", {}),
        (".tiff", {}),
        (".webp", {"lossless": True}),
        (".tif", {"compression": "tiff_lzw"}),
    ],
)
def test_lossless_formats_round_trip_exactly(tmp_path, suffix, options):
    pixels = random_rgb(17, 23)
    loaded = load_image(save(tmp_path / f"x{suffix}", Image.fromarray(pixels), **options))
    assert isinstance(loaded, LoadedImage)
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert loaded.pixels.dtype == np.uint8 and loaded.pixels.flags.c_contiguous
    assert (loaded.width, loaded.height) == (23, 17)
    assert loaded.mode == "RGB" and loaded.n_frames == 1 and loaded.notes == []


def test_gif_round_trips_palette_colours_exactly(tmp_path):
    indices = np.random.default_rng(1).integers(0, 4, (9, 11), dtype=np.uint8)
    palette = [10, 20, 30, 200, 0, 0, 0, 180, 90, 255, 255, 0]
    image = Image.fromarray(indices, "P")
    image.putpalette(palette)
    loaded = load_image(save(tmp_path / "x.gif", image))
    expected = np.array(palette, np.uint8).reshape(-1, 3)[indices]
    np.testing.assert_array_equal(loaded.pixels, expected)
    assert (loaded.format, loaded.mode) == ("GIF", "P")


def test_jpeg_matches_pils_decoder_and_the_original_approximately(tmp_path):
    pixels = smooth_rgb(32, 48)
    path = save(tmp_path / "x.jpg", Image.fromarray(pixels), quality=95)
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.pixels, np.array(Image.open(path).convert("RGB")))
    assert np.abs(loaded.pixels.astype(int) - pixels).mean() < 3
    assert loaded.format == "JPEG"


def test_extension_does_not_decide_the_format(tmp_path):
    pixels = random_rgb(8, 8)
    loaded = load_image(save(tmp_path / "really_a_png.jpg", Image.fromarray(pixels), "PNG"))
    assert loaded.format == "PNG"
    np.testing.assert_array_equal(loaded.pixels, pixels)


# ----------------------------------------------------------------------------------------------
# Orientation and colour modes
# ----------------------------------------------------------------------------------------------


def marked_corner_image(height: int = 24, width: int = 48) -> np.ndarray:
    pixels = np.full((height, width, 3), 128, np.uint8)
    pixels[:8, :8] = RED  # top-left corner as stored
    return pixels


def with_orientation(image: Image.Image, orientation: int) -> Image.Exif:
    exif = image.getexif()
    exif[0x0112] = orientation
    return exif


def test_exif_orientation_6_rotates_a_jpeg(tmp_path):
    image = Image.fromarray(marked_corner_image())
    loaded = load_image(save(tmp_path / "o.jpg", image, exif=with_orientation(image, 6), quality=95))
    # Orientation 6: the viewer rotates 90 degrees clockwise; the stored top-left goes top-right.
    assert loaded.pixels.shape == (48, 24, 3)
    assert np.abs(loaded.pixels[1:7, -7:-1].astype(int) - RED).max() < 40
    assert np.abs(loaded.pixels[1:7, 1:7].astype(int) - 128).max() < 40
    assert "EXIF orientation 6 applied" in loaded.notes


@pytest.mark.parametrize(
    ("orientation", "expected"), [(3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1))]
)
def test_exif_orientation_is_exact_on_png(tmp_path, orientation, expected):
    pixels = random_rgb(5, 9)
    image = Image.fromarray(pixels)
    loaded = load_image(save(tmp_path / "o.png", image, exif=with_orientation(image, orientation)))
    np.testing.assert_array_equal(loaded.pixels, expected(pixels))
    assert loaded.pixels.flags.c_contiguous


def test_no_orientation_note_without_orientation(tmp_path):
    loaded = load_image(save(tmp_path / "x.jpg", Image.fromarray(random_rgb(8, 8))))
    assert not any("orientation" in note for note in loaded.notes)


def test_palette_with_transparency_is_composited(tmp_path):
    indices = np.array([[0, 1, 2]], np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette([*RED, *GREEN, *BLUE])
    # index 1 fully transparent, index 2 half transparent, index 0 opaque
    loaded = load_image(save(tmp_path / "p.png", image, transparency=bytes([255, 0, 128])))
    assert loaded.mode == "P"
    assert tuple(loaded.pixels[0, 0]) == RED
    assert tuple(loaded.pixels[0, 1]) == WHITE
    np.testing.assert_allclose(loaded.pixels[0, 2], [127, 127, 255], atol=1)
    assert f"alpha composited on {DEFAULT_ALPHA_BACKGROUND}" in loaded.notes


def test_rgb_with_transparent_colour_key(tmp_path):
    pixels = np.array([[[1, 2, 3], [9, 9, 9]]], np.uint8)
    loaded = load_image(save(tmp_path / "k.png", Image.fromarray(pixels), transparency=(1, 2, 3)))
    np.testing.assert_array_equal(loaded.pixels, [[WHITE, (9, 9, 9)]])


def test_cmyk_tiff_and_jpeg(tmp_path):
    cmyk = np.array([[[0, 255, 255, 0], [0, 0, 0, 255], [0, 0, 0, 0], [255, 0, 255, 0]]], np.uint8)
    loaded = load_image(save(tmp_path / "c.tiff", Image.fromarray(cmyk, "CMYK")))
    np.testing.assert_array_equal(loaded.pixels, [[RED, (0, 0, 0), WHITE, GREEN]])
    assert loaded.mode == "CMYK" and any("CMYK" in note for note in loaded.notes)

    solid = Image.new("CMYK", (16, 16), (255, 0, 255, 0))  # green
    loaded = load_image(save(tmp_path / "c.jpg", solid, quality=95))
    assert loaded.mode == "CMYK"
    assert np.abs(loaded.pixels.astype(int) - GREEN).max() <= 3


def test_la_is_composited_on_white(tmp_path):
    loaded = load_image(save(tmp_path / "la.png", Image.new("LA", (3, 2), (100, 128))))
    expected = (100 * 128 + 255 * 127) / 255
    assert loaded.mode == "LA"
    assert np.abs(loaded.pixels.astype(float) - expected).max() <= 1


def test_grey_and_bilevel(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    loaded = load_image(save(tmp_path / "l.png", Image.fromarray(grey, "L")))
    np.testing.assert_array_equal(loaded.pixels, np.repeat(grey[:, :, None], 3, axis=2))
    bits = Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1")
    loaded = load_image(save(tmp_path / "b.png", bits))
    np.testing.assert_array_equal(loaded.pixels, [[(0, 0, 0), WHITE]])
    assert loaded.mode == "1"


SIXTEEN_BIT = np.array([[0, 257, 257 * 7, 257 * 200], [1000, 32768, 65534, 65535]], np.uint16)
SIXTEEN_TO_EIGHT = np.array([[0, 1, 7, 200], [4, 128, 255, 255]], np.uint8)  # scaled, not clipped to 255


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_sixteen_bit_grey_is_divided_by_257(tmp_path, suffix):
    loaded = load_image(save(tmp_path / f"g16{suffix}", Image.fromarray(SIXTEEN_BIT)))
    assert loaded.mode.startswith("I;16")
    np.testing.assert_array_equal(loaded.pixels[:, :, 0], SIXTEEN_TO_EIGHT)
    np.testing.assert_array_equal(loaded.pixels[:, :, 0], loaded.pixels[:, :, 2])
    assert "16-bit converted to 8-bit (divided by 257)" in loaded.notes


def test_32_bit_integer_tiff_in_16_bit_range_is_scaled_and_out_of_range_refused(tmp_path):
    loaded = load_image(save(tmp_path / "i.tiff", Image.fromarray(SIXTEEN_BIT.astype(np.int32))))
    assert loaded.mode == "I"
    np.testing.assert_array_equal(loaded.pixels[:, :, 1], SIXTEEN_TO_EIGHT)
    too_big = save(tmp_path / "big.tiff", Image.fromarray(np.array([[70000]], np.int32)))
    assert "outside 0..65535" in load_reason(too_big)


def test_sixteen_bit_rgb_png_keeps_the_high_byte(tmp_path):
    channels = np.zeros((2, 3, 3), ">u2")
    channels[..., 0], channels[..., 1], channels[..., 2] = 65535, 257 * 100, 0x1234
    rows = b"".join(b"\0" + channels[y].tobytes() for y in range(2))
    path = tmp_path / "rgb16.png"
    path.write_bytes(handmade_png(3, 2, 16, 2, rows))
    loaded = load_image(path)
    assert np.all(loaded.pixels == np.array([255, 100, 0x12], np.uint8))
    assert "16-bit converted to 8-bit (high byte kept)" in loaded.notes


@pytest.mark.parametrize(
    ("background", "expected"),
    [((255, 255, 255), [(127, 127, 127), (255, 255, 255), (10, 200, 30)]),
     ((10, 20, 30), [(5, 10, 15), (10, 20, 30), (10, 200, 30)])],
)  # fmt: skip
def test_rgba_composited_on_background(tmp_path, background, expected):
    rgba = np.array([[[0, 0, 0, 128], [90, 90, 90, 0], [10, 200, 30, 255]]], np.uint8)
    path = save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))
    loaded = load_image(path, LoadRules(alpha_background=background))
    np.testing.assert_allclose(loaded.pixels[0].astype(int), expected, atol=1)
    assert tuple(loaded.pixels[0, 1]) == background  # fully transparent: exactly the background
    assert tuple(loaded.pixels[0, 2]) == (10, 200, 30)  # opaque: exactly the pixel
    assert f"alpha composited on {background}" in loaded.notes


def test_opaque_alpha_adds_no_note(tmp_path):
    loaded = load_image(save(tmp_path / "a.png", Image.new("RGBA", (2, 2), (1, 2, 3, 255))))
    assert loaded.notes == [] and tuple(loaded.pixels[0, 0]) == (1, 2, 3)


def test_load_rules_validate_their_values():
    with pytest.raises(ValueError):
        LoadRules(alpha_background=(256, 0, 0))
    with pytest.raises(ValueError):
        LoadRules(max_pixels=0)


# ----------------------------------------------------------------------------------------------
# Animations
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "fmt"), [(".gif", "GIF"), (".webp", "WEBP"), (".apng", "PNG")])
def test_animation_uses_frame_zero_and_says_so(tmp_path, suffix, fmt):
    frames = [Image.new("RGB", (8, 6), colour) for colour in (RED, GREEN, BLUE)]
    path = tmp_path / f"anim{suffix}"
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    loaded = load_image(path)
    assert (loaded.format, loaded.n_frames) == (fmt, 3)
    assert np.all(loaded.pixels == np.array(RED, np.uint8))
    assert "first of 3 frames used" in loaded.notes


# ----------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------


def test_loading_never_turns_on_truncated_images(tmp_path, monkeypatch):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    path = save(tmp_path / "x.png", Image.new("RGB", (2, 2)))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as if some other code had set it
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        load_image(path)


@pytest.mark.parametrize(("suffix", "options"), [(".png", {}), (".jpg", {"quality": 90}), (".webp", {})])
def test_truncated_files_are_refused(tmp_path, suffix, options):
    data = (save(tmp_path / f"full{suffix}", Image.fromarray(random_rgb(64, 64)), **options)).read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as caught:
        load_image(path)
    assert caught.value.path == str(path) and "corrupt or truncated" in caught.value.reason
    assert caught.value.kind == "unusable"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_jpeg_missing_only_its_end_marker_is_refused(tmp_path):
    data = save(tmp_path / "full.jpg", Image.fromarray(random_rgb(32, 32))).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:-2])
    assert "truncated" in load_reason(tmp_path / "cut.jpg")


def test_corrupt_data_is_refused(tmp_path):
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    assert load_reason(tmp_path / "garbage.png") == "corrupt or truncated image data (invalid PNG header)"
    data = bytearray(save(tmp_path / "ok.png", Image.fromarray(random_rgb(32, 32))).read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the compressed pixel data
    (tmp_path / "flipped.png").write_bytes(bytes(data))
    assert "corrupt" in load_reason(tmp_path / "flipped.png")


def test_text_file_named_png_is_not_an_image(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("just some text\n")
    with pytest.raises(ImageError) as caught:
        load_image(path)
    assert str(caught.value) == f"{path}: {caught.value.reason}"
    assert "not a recognised image" in caught.value.reason


def test_formats_outside_the_allow_list_are_refused(tmp_path):
    path = save(tmp_path / "x.ppm", Image.fromarray(random_rgb(4, 4)))
    assert "not a recognised image" in load_reason(path)


def test_empty_missing_directory_and_unreadable(tmp_path, monkeypatch):
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty" in load_reason(tmp_path / "empty.png")
    assert "empty" in load_reason(b"", name="up.png")
    assert "not found" in load_reason(tmp_path / "missing.png")
    (tmp_path / "folder.png").mkdir()
    assert "directory" in load_reason(tmp_path / "folder.png")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    good = save(tmp_path / "good.png", Image.new("RGB", (2, 2)))
    monkeypatch.setattr("animeprov.io.open", refuse, raising=False)  # root ignores chmod, so simulate
    assert "permission denied" in load_reason(good)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_unreadable_file_really_refused(tmp_path):
    path = save(tmp_path / "locked.png", Image.new("RGB", (2, 2)))
    path.chmod(0)
    assert "permission denied" in load_reason(path)


def test_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = save(tmp_path / "x.png", Image.new("RGB", (40, 30)))
    decoded = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or original_load(self))
    reason = load_reason(path, rules=LoadRules(max_pixels=1000))
    assert "40x30 = 1,200 pixels exceeds the limit of 1,000" in reason
    assert decoded == []
    load_image(path, LoadRules(max_pixels=1200))  # at the limit: accepted (and decoded)
    assert decoded


@pytest.mark.parametrize(
    ("side", "expected"),
    [
        (10_000, "10000x10000 = 100,000,000 pixels exceeds the limit of 64,000,000"),  # PIL only warns
        (20_000, "too many pixels, refused before decoding"),  # PIL's own hard limit fires first
    ],
)
def test_decompression_bomb_headers_are_refused_without_leaking_pil_warnings(tmp_path, side, expected):
    path = tmp_path / "bomb.png"
    path.write_bytes(handmade_png(side, side, 1, 0))  # a few hundred bytes on disk
    limit_before, filters_before = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any DecompressionBombWarning escaping would fail here
        with pytest.raises(ImageError) as caught:
            load_image(path)
    assert expected in caught.value.reason and caught.value.kind == "too-large"
    assert Image.MAX_IMAGE_PIXELS == limit_before and warnings.filters == filters_before


# ----------------------------------------------------------------------------------------------
# Bytes, errors and metadata
# ----------------------------------------------------------------------------------------------


def test_bytes_input_matches_file_input_and_names_errors(tmp_path):
    path = save(tmp_path / "x.png", Image.fromarray(random_rgb(6, 7)))
    from_bytes = load_image(path.read_bytes(), name="upload.png")
    np.testing.assert_array_equal(from_bytes.pixels, load_image(path).pixels)
    assert from_bytes.path == "upload.png"
    with pytest.raises(ImageError, match=r"^upload\.png: not a recognised image") as caught:
        load_image(b"hello", name="upload.png")
    assert caught.value.kind == "not-image"
    with pytest.raises(ImageError, match=r"^<bytes>: "):
        load_image(b"hello")


def test_image_error_shape_and_pickling():
    error = ImageError("a/b.png", "empty file")
    assert isinstance(error, ValueError)
    assert (str(error), error.path, error.reason) == ("a/b.png: empty file", "a/b.png", "empty file")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.path, copy.reason) == (ImageError, "a/b.png", "empty file")


def test_png_text_chunks_become_metadata(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "1girl, Steps: 20, Sampler: Euler a")
    info.add_itxt("prompt", '{"3": {"class_type": "KSampler"}}')
    info.add_text("Software", "NovelAI", zip=True)
    info.add_text("long", "x" * (MAX_METADATA_CHARS + 10))
    loaded = load_image(save(tmp_path / "m.png", Image.new("RGB", (4, 4)), pnginfo=info))
    assert loaded.metadata["parameters"] == "1girl, Steps: 20, Sampler: Euler a"
    assert loaded.metadata["prompt"] == '{"3": {"class_type": "KSampler"}}'
    assert type(loaded.metadata["prompt"]) is str
    assert loaded.metadata["Software"] == "NovelAI"
    assert loaded.metadata["long"].startswith("x" * MAX_METADATA_CHARS)
    assert loaded.metadata["long"].endswith("[truncated 10 chars]")


def test_jpeg_exif_text_becomes_metadata(tmp_path):
    exif = Image.Exif()
    exif[0x0131] = "Some Editor 1.0"
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + "Steps: 28, Seed: 1".encode("utf-16-be")
    path = save(tmp_path / "m.jpg", Image.new("RGB", (4, 4)), exif=exif, comment=b"made by hand")
    loaded = load_image(path)
    assert loaded.metadata["EXIF:Software"] == "Some Editor 1.0"
    assert loaded.metadata["EXIF:UserComment"] == "Steps: 28, Seed: 1"
    assert loaded.metadata["comment"] == "made by hand"


# ----------------------------------------------------------------------------------------------
# Views
# ----------------------------------------------------------------------------------------------


def test_crop_is_the_exact_centre(tmp_path):
    pixels = random_rgb(200, 300)
    (view,) = make_views(pixels, 128, "crop")
    np.testing.assert_array_equal(view, pixels[36:164, 86:214])
    assert view.flags.c_contiguous and view.dtype == np.uint8


def test_tiles_for_600x300_at_256():
    pixels = random_rgb(300, 600)  # width 600, height 300
    assert tile_grid(300, 600, 256) == [(22, 44), (22, 300)]
    views = make_views(pixels, 256, "tiles")
    assert len(views) == 2
    np.testing.assert_array_equal(views[0], pixels[22:278, 44:300])
    np.testing.assert_array_equal(views[1], pixels[22:278, 300:556])


def test_tile_grid_is_centred_and_row_major():
    assert tile_grid(70, 50, 20) == [(5, 5), (5, 25), (25, 5), (25, 25), (45, 5), (45, 25)]
    assert tile_grid(64, 64, 32) == [(0, 0), (0, 32), (32, 0), (32, 32)]
    assert tile_grid(10, 100, 32) == []


def test_a_tile_budget_keeps_an_evenly_spread_sub_grid_edge_to_edge():
    every = tile_grid(512, 512, 64)
    assert len(every) == 64 and tile_grid(512, 512, 64, max_tiles=64) == every
    # 16 of the 8 x 8 tiles: rows and columns 0, 2, 5, 7 (i * 7 / 3 rounded), first and last included
    kept = tile_grid(512, 512, 64, max_tiles=16)
    assert kept == [(64 * r, 64 * c) for r in (0, 2, 5, 7) for c in (0, 2, 5, 7)]
    assert set(kept) <= set(every)
    # the largest sub-grid within the budget, shaped like the grid: 2 x 8 tiles of a 4 x 16 strip
    strip = tile_grid(4 * 32, 16 * 32, 32, max_tiles=16)
    assert sorted({t for t, _ in strip}) == [0, 96] and len({s for _, s in strip}) == 8
    assert tile_grid(4 * 32, 16 * 32, 32, max_tiles=1) == [(32, 7 * 32)]  # one tile: the middle one
    assert tile_grid(64, 96, 32, max_tiles=100) == tile_grid(64, 96, 32)  # fewer tiles than the budget
    with pytest.raises(ValueError, match="max_tiles must be at least 1"):
        tile_grid(64, 64, 32, max_tiles=0)
    pixels = np.arange(512 * 512 * 3, dtype=np.uint32).astype(np.uint8).reshape(512, 512, 3)
    views = make_views(pixels, 64, "tiles", max_tiles=16)
    assert len(views) == 16 and np.array_equal(views[5], pixels[128:192, 128:192])  # row 2, column 2


@pytest.mark.parametrize("mode", ["crop", "tiles"])
def test_too_small_is_refused_for_crop_and_tiles(mode):
    with pytest.raises(ImageError) as caught:
        make_views(random_rgb(80, 300), 256, mode, path="small.png")
    assert caught.value.path == "small.png"
    assert "300x80 image is smaller than the 256x256 view; use --view pad" in caught.value.reason


def test_pad_keeps_pixels_and_fills_with_the_pad_colour():
    pixels = random_rgb(80, 100)
    (view,) = make_views(pixels, 128, "pad", pad_value=(1, 2, 3))
    assert view.shape == (128, 128, 3)
    np.testing.assert_array_equal(view[24:104, 14:114], pixels)
    assert tuple(view[0, 0]) == (1, 2, 3) and tuple(view[-1, -1]) == (1, 2, 3)
    wide = random_rgb(50, 300)  # wider than the view, shorter than it: pad rows, crop columns
    (view,) = make_views(wide, 128, "pad")
    np.testing.assert_array_equal(view[39:89], wide[:, 86:214])
    assert np.all(view[:39] == 255)


def test_only_resize_mode_resamples(monkeypatch):
    pixels = random_rgb(200, 400)
    (resized,) = make_views(pixels, 100, "resize")
    reference = np.array(Image.fromarray(pixels).resize((200, 100), Image.Resampling.BICUBIC))[:, 50:150]
    np.testing.assert_array_equal(resized, reference)

    def no_resampling(*args, **kwargs):
        raise AssertionError("resampled outside resize mode")

    monkeypatch.setattr(Image.Image, "resize", no_resampling)
    for mode in ("crop", "tiles", "pad"):
        assert all(view.shape == (100, 100, 3) for view in make_views(pixels, 100, mode))
    assert make_views(random_rgb(30, 40), 100, "pad")[0].shape == (100, 100, 3)
    assert set(VIEW_MODES) == {"crop", "tiles", "pad", "resize"}


def test_views_reject_bad_arguments():
    with pytest.raises(ValueError, match="unknown view mode"):
        make_views(random_rgb(8, 8), 4, "stretch")
    with pytest.raises(ValueError):
        make_views(np.zeros((8, 8), np.uint8), 4)
    with pytest.raises(ValueError):
        make_views(random_rgb(8, 8), 0)


def test_views_do_not_alias_the_input():
    pixels = random_rgb(32, 32)
    (view,) = make_views(pixels, 32, "crop")
    view[:] = 0
    assert pixels.any()


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def test_iter_image_files_order_filter_and_recursion(tmp_path):
    for name in [
        "b.PNG",
        "a.jpg",
        "notes.txt",
        "c.JpEg",
        ".hidden.png",
        "sub/z.webp",
        "sub/deep/d.tiff",
        "a/x.gif",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()  # a folder with an image-like name is walked, not yielded
    found = iter_image_files([tmp_path])
    assert inspect.isgenerator(found)
    relative = [p.relative_to(tmp_path).as_posix() for p in found]
    assert relative == ["a/x.gif", "a.jpg", "b.PNG", "c.JpEg", "sub/deep/d.tiff", "sub/z.webp"]
    assert relative == sorted(relative, key=lambda p: Path(p).parts)
    top = [p.name for p in iter_image_files([tmp_path], recursive=False)]
    assert top == ["a.jpg", "b.PNG", "c.JpEg"]
    given = tmp_path / "notes.txt"
    assert list(iter_image_files([given, str(tmp_path / "sub")])) == [
        given,
        tmp_path / "sub/deep/d.tiff",
        tmp_path / "sub/z.webp",
    ]


def test_iter_image_files_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope: no such file or folder"):
        list(iter_image_files([tmp_path, tmp_path / "nope"]))


def bad_entries(folder: Path) -> Path:
    """A folder with a good image, a symlink loop, a dangling symlink and a FIFO, all named like images."""
    folder.mkdir()
    save(folder / "good.png", Image.new("RGB", (2, 2)))
    os.symlink("loop-b.png", folder / "loop-a.png")
    os.symlink("loop-a.png", folder / "loop-b.png")
    os.symlink("gone.png", folder / "dangling.png")
    os.mkfifo(folder / "pipe.png")
    return folder


@pytest.mark.skipif(os.name != "posix", reason="symlinks and FIFOs need POSIX")
def test_walk_yields_bad_entries_for_the_loader_to_name_and_never_raises(tmp_path):
    folder = bad_entries(tmp_path / "d")
    found = [p.name for p in iter_image_files([folder])]  # used to raise OSError (ELOOP) from the walk
    assert found == ["dangling.png", "good.png", "loop-a.png", "loop-b.png", "pipe.png"]
    assert load_reason(folder / "dangling.png") == "broken symbolic link (its target does not exist)"
    assert load_reason(folder / "loop-a.png").startswith("symbolic link loop")
    assert load_reason(folder / "pipe.png") == "not a regular file (a FIFO)"
    with pytest.raises(ImageError, match="a FIFO"):  # never blocks on the pipe
        read_file(folder / "pipe.png")
    assert read_file(folder / "good.png") == (folder / "good.png").read_bytes()


def test_walk_reports_a_folder_it_cannot_list_and_goes_on(tmp_path, monkeypatch):
    for name in ("a/1.png", "locked/2.png", "z/3.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        save(tmp_path / name, Image.new("RGB", (2, 2)))
    real_scandir = os.scandir

    def scandir(path):  # root ignores mode 000, so simulate it
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    skipped = []
    found = list(
        iter_image_files([tmp_path], on_skip=lambda folder, reason: skipped.append((folder, reason)))
    )
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/1.png", "z/3.png"]
    assert skipped == [
        (tmp_path / "locked", "cannot list this folder (Permission denied); files in it were skipped")
    ]
    with pytest.warns(UserWarning, match="locked: cannot list this folder"):  # without on_skip: a warning
        assert len(list(iter_image_files([tmp_path]))) == 2


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_walk_really_skips_a_mode_000_folder(tmp_path):
    save(tmp_path / "1.png", Image.new("RGB", (2, 2)))
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0)
    try:
        skipped = []
        found = list(iter_image_files([tmp_path], on_skip=lambda folder, reason: skipped.append(folder)))
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert [p.name for p in found] == ["1.png"] and skipped == [tmp_path / "locked"]


def test_png_text_chunk_over_pils_limit_is_skipped_and_noted(tmp_path):
    pixels = random_rgb(8, 8, seed=5)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), zip=True)  # ~2 KB compressed
    info.add_itxt("workflow", "y" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), zip=True)
    info.add_text("Software", "NovelAI")
    path = save(tmp_path / "big-text.png", Image.fromarray(pixels), pnginfo=info)
    loaded = load_image(path)  # was refused as "corrupt or truncated"
    np.testing.assert_array_equal(loaded.pixels, pixels)
    limit = f"{PngImagePlugin.MAX_TEXT_CHUNK:,}"
    assert loaded.notes == [
        f"PNG text chunk 'parameters' over {limit} bytes skipped",
        f"PNG text chunk 'workflow' over {limit} bytes skipped",
    ]
    assert loaded.metadata == {"Software": "NovelAI"}


def test_sha256_file_matches_hashlib(tmp_path):
    data = np.random.default_rng(2).bytes(700_000)  # more than one read chunk
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
