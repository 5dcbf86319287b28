"""The one image decoder: every kind of file comes out as a viewer shows it (bit depth, orientation,
transparency, palette, CMYK), and a non-square image is resized by its short side and
centre-cropped."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.images import BACKGROUND, UnreadableImage, decode_batch, decode_image, load_rgb


def pixels(path, size=None) -> np.ndarray:
    return decode_image(path, size).permute(1, 2, 0).numpy()  # (H, W, C)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)  # (H, W) 16 bits
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    out = pixels(tmp_path / "g16.png")
    expected = np.rint(ramp / 257).astype(np.uint8)
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert (out == out[..., :1]).all()  # grey: three equal channels
    assert out.mean() == pytest.approx(127.5, abs=1)  # not solid white (convert("RGB") clips)


@pytest.mark.parametrize("orientation, turn", [(3, 2), (6, 3), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    upright = np.zeros((24, 40, 3), np.uint8)  # (H, W, C): wide, a red block top-left
    upright[:8, :8] = (255, 0, 0)
    # as the camera stored it; the tag says how to undo it
    stored = np.rot90(upright, k=-turn).copy()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "photo.png", exif=exif)
    out = pixels(tmp_path / "photo.png")
    assert out.shape == upright.shape
    np.testing.assert_array_equal(out, upright)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black ...
    rgba[:4, :, :] = (200, 10, 10, 255)  # ... under an opaque red top half
    rgba[4:, :4, :] = (0, 0, 200, 128)  # and a half-transparent blue quarter
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = pixels(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], (200, 10, 10))
    np.testing.assert_array_equal(out[7, 7], BACKGROUND)  # not the black under the alpha
    np.testing.assert_allclose(out[7, 0], (127, 127, 227), atol=1)  # blue over white, half and half


def test_palette_with_a_transparent_entry_and_grey_alpha(tmp_path):
    index = np.zeros((6, 6), np.uint8)
    index[:3] = 1
    palette = Image.fromarray(index, "P")
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(tmp_path / "p.png", transparency=0)  # entry 0 (black) is transparent
    out = pixels(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 0], (10, 200, 30))
    np.testing.assert_array_equal(out[5, 5], BACKGROUND)
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 0], la[..., 1] = 50, 0  # grey 50, fully transparent
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(pixels(tmp_path / "la.png")[0, 0], BACKGROUND)


def test_cmyk_and_bilevel_jpeg_and_png(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(tmp_path / "c.jpg", quality=100)
    np.testing.assert_allclose(pixels(tmp_path / "c.jpg")[4, 4], (255, 0, 0), atol=8)
    Image.new("1", (8, 8), 1).save(tmp_path / "b.png")
    np.testing.assert_array_equal(pixels(tmp_path / "b.png")[0, 0], (255, 255, 255))


def test_non_square_is_resized_by_its_short_side_and_centre_cropped(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)  # (H, W, C): 20 x 60, a white middle third
    wide[:, 20:40] = 255
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = pixels(tmp_path / "wide.png", 10)
    assert out.shape == (10, 10, 3)
    # the centre 20 x 20 square only (its edge columns blend with their outside neighbours, as when
    # the whole image is resized first); stretching would put the black thirds in columns 0-2
    # and 7-9
    assert (out[:, 1:-1] == 255).all() and out.min() > 200
    tall = np.zeros((60, 20, 3), np.uint8)
    tall[20:40] = 255
    Image.fromarray(tall).save(tmp_path / "tall.png")
    out = pixels(tmp_path / "tall.png", 10)
    assert (out[1:-1] == 255).all() and out.min() > 200
    assert pixels(tmp_path / "wide.png").shape == (20, 60, 3)  # no size: the image as it is


def test_square_rgb_is_resized_as_before(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "s.png")
    expected = np.asarray(Image.fromarray(arr).resize((8, 8), Image.BICUBIC))
    np.testing.assert_array_equal(pixels(tmp_path / "s.png", 8), expected)
    np.testing.assert_array_equal(pixels(tmp_path / "s.png"), arr)


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_undecodable_files_raise_unreadable_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(UnreadableImage, match="bad.png"):
        load_rgb(path)


def test_a_batch_decodes_like_its_frames_one_by_one(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(40, 40), (48, 32), (40, 40)]):  # (W, H): one non-square
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(paths[-1])
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    images, readable = decode_batch([paths[0], tmp_path / "bad.jpg", paths[1], paths[2]], 32)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    assert readable.tolist() == [True, False, True, True]
    assert not images[1].any()  # an unreadable frame is zeros
    for row, path in zip([0, 2, 3], paths):
        assert torch.equal(images[row], decode_image(path, 32))
