"""The fast JPEG path (simplejpeg) gives Pillow's pixels, and leaves to Pillow every file it must
not take: EXIF orientation, grey, CMYK, damaged files, other formats."""

import io

import av
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.images import (
    UnreadableImage,
    decode_batch,
    load_rgb,
    pillow_rgb,
    square_resize,
)
from pipeline.data.jpeg import decode_plain_jpeg


def noisy_face(h=48, w=40) -> np.ndarray:
    """(H, W, 3) uint8: smooth gradients plus noise, so every DCT band and chroma sample matters."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 5, xx * 6, (yy + xx) * 3], -1)
    return np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("options", [{"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2},
                                     {"progressive": True}, {"quality": 97, "optimize": True}])
def test_plain_jpegs_decode_to_pillows_pixels(tmp_path, options):
    path = tmp_path / "f.jpg"
    Image.fromarray(noisy_face()).save(path, **options)
    fast = decode_plain_jpeg(path)
    assert fast is not None, "a plain colour JPEG should take the fast path"
    np.testing.assert_array_equal(fast, np.asarray(pillow_rgb(path)))
    np.testing.assert_array_equal(np.asarray(load_rgb(path)), np.asarray(pillow_rgb(path)))


def test_a_real_clips_frames_decode_to_pillows_pixels(tmp_path, carphone):
    with av.open(str(carphone)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == 3:
                break
            path = tmp_path / f"{i:05d}.jpg"
            frame.to_image().save(path, quality=90)
            fast = decode_plain_jpeg(path)
            assert fast is not None and fast.shape == (frame.height, frame.width, 3)
            np.testing.assert_array_equal(fast, np.asarray(pillow_rgb(path)))


def exif_jpeg(path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(noisy_face()).save(path, exif=exif)


def test_jpegs_the_fast_path_leaves_to_pillow(tmp_path):
    exif_jpeg(tmp_path / "exif.jpg", 6)
    Image.fromarray(noisy_face()[..., 0]).save(tmp_path / "grey.jpg")
    Image.new("CMYK", (16, 16), (0, 80, 160, 10)).save(tmp_path / "cmyk.jpg")
    Image.fromarray(noisy_face()).save(tmp_path / "frame.png")
    buffer = io.BytesIO()
    Image.fromarray(noisy_face()).save(buffer, "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "png-named-jpg.jpg").write_bytes((tmp_path / "frame.png").read_bytes())
    for name in ("exif.jpg", "grey.jpg", "cmyk.jpg", "frame.png", "truncated.jpg",
                 "png-named-jpg.jpg", "missing.jpg"):
        assert decode_plain_jpeg(tmp_path / name) is None, name
    # and Pillow then does what it did before: the file misnamed .jpg decodes, the truncated one is
    # reported naming it
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "png-named-jpg.jpg")),
                                  noisy_face())
    with pytest.raises(UnreadableImage, match="truncated.jpg"):
        load_rgb(tmp_path / "truncated.jpg")


def test_a_jpegs_exif_orientation_is_still_applied(tmp_path):
    exif_jpeg(tmp_path / "photo.jpg", 6)  # stored 48 x 40 (H, W); shown turned a quarter
    out = np.asarray(load_rgb(tmp_path / "photo.jpg"))
    assert out.shape == (40, 48, 3)
    np.testing.assert_array_equal(out, np.asarray(pillow_rgb(tmp_path / "photo.jpg")))


def test_a_batch_of_frames_at_the_input_size_matches_pillow(tmp_path):
    paths = []
    for i, (h, w) in enumerate([(48, 48), (48, 40), (48, 48)]):  # one needs the resize path
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(noisy_face(h, w)).save(paths[-1])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not a whole jpeg")
    images, readable = decode_batch([*paths, tmp_path / "bad.jpg"], 48)
    assert readable.tolist() == [True, True, True, False]
    for row, path in enumerate(paths):
        image = pillow_rgb(path)
        if image.size != (48, 48):
            image = square_resize(image, 48)
        expected = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        assert torch.equal(images[row], expected)
    assert not images[3].any()


def test_an_xmp_orientation_and_an_odd_marker_are_left_to_pillow(tmp_path):
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
           b'22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
           b'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    Image.fromarray(noisy_face()).save(tmp_path / "xmp.jpg", xmp=xmp)
    assert decode_plain_jpeg(tmp_path / "xmp.jpg") is None
    assert np.asarray(load_rgb(tmp_path / "xmp.jpg")).shape == np.asarray(
        pillow_rgb(tmp_path / "xmp.jpg")).shape
    Image.fromarray(noisy_face()).save(tmp_path / "plain.jpg")
    data = (tmp_path / "plain.jpg").read_bytes()
    (tmp_path / "tem.jpg").write_bytes(data[:2] + b"\xff\x01" + data[2:])  # a TEM marker
    assert decode_plain_jpeg(tmp_path / "tem.jpg") is None


def test_plain_frames_take_the_fast_path(tmp_path, monkeypatch):
    Image.fromarray(noisy_face(48, 48)).save(tmp_path / "f.jpg")
    expected = np.asarray(pillow_rgb(tmp_path / "f.jpg"))

    def refuse(path):
        raise AssertionError(f"{path} went through Pillow")

    monkeypatch.setattr("pipeline.data.images.pillow_rgb", refuse)
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "f.jpg")), expected)
    images, readable = decode_batch([tmp_path / "f.jpg"], 48)
    assert readable.all() and np.array_equal(images[0].permute(1, 2, 0).numpy(), expected)
