"""FER2013's CSV as a pretraining source, on real faces: scikit-image's LFW subset written in
FER2013's layout (48 x 48 grey pixel strings) with a few bad rows, beside a folder of real stills
(the astronaut)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from pipeline.data.fer2013 import read_fer2013
from pipeline.data.pretrain_images import PretrainImages, decode_source, find_images
from pipeline.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lfw_faces() -> np.ndarray:
    """The 100 faces of scikit-image's LFW subset as 48 x 48 uint8 grey images."""
    from skimage.data import lfw_subset

    # (100, 25, 25), the first 100 are faces
    faces = (lfw_subset()[:100] * 255).round().astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(f).resize((48, 48), Image.BICUBIC)) for f in faces])


def write_fer_csv(path, faces: np.ndarray, bad: dict[int, str] | None = None):
    """FER2013's layout: emotion,pixels,Usage; row i (line i + 2) replaced by bad[i] where given."""
    lines = ["emotion,pixels,Usage"]
    for i, face in enumerate(faces):
        pixels = bad.get(i) if bad and i in bad else " ".join(map(str, face.reshape(-1)))
        lines.append(f"{i % 7},{pixels},{'Training' if i < 80 else 'PublicTest'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rows_are_read_as_faces_and_bad_rows_reported_once(lfw_faces, tmp_path):
    bad = {3: "1 2 3", 10: " ".join(["300"] * 2304), 20: " ".join(["x"] * 2304)}
    path = write_fer_csv(tmp_path / "fer2013.csv", lfw_faces, bad)
    warnings = []
    images = read_fer2013(path, warnings.append)
    assert len(images) == 97 and len(warnings) == 1
    assert warnings[0] == (f"{path}:5: 3 pixel values, expected 2304; row skipped "
                           "(and 2 more bad rows)")
    assert str(images[3]) == f"{path}:6"  # named by file and line, as a file is by its path
    np.testing.assert_array_equal(images[0].pixels, lfw_faces[0])
    tensor = decode_source(images[0], 32)  # grey to RGB, resized as any image
    assert (tensor.shape == (3, 32, 32) and (tensor[0] == tensor[1]).all()
            and (tensor[1] == tensor[2]).all())
    sample, bad_index = PretrainImages(images, 32)[5]
    assert sample.shape == (3, 32, 32) and bad_index == -1
    (tmp_path / "labels.csv").write_text("emotion,Usage\n0,Training\n")
    with pytest.raises(InputError, match="labels.csv:1: no 'pixels' column"):
        read_fer2013(tmp_path / "labels.csv")
    with pytest.raises(InputError, match="no usable image row"):
        read_fer2013(write_fer_csv(tmp_path / "all_bad.csv", lfw_faces[:2], {0: "1", 1: "2"}))


def test_pretraining_on_fer2013_and_a_folder_of_stills(lfw_faces, tmp_path):
    from skimage.data import astronaut

    csv_path = write_fer_csv(tmp_path / "fer2013.csv", lfw_faces[:40], {7: "12 13"})
    stills = tmp_path / "stills"
    stills.mkdir()
    Image.fromarray(astronaut()).save(stills / "astronaut.png")
    for i in range(8):
        Image.fromarray(lfw_faces[40 + i]).save(stills / f"lfw{i}.jpg")  # grey JPEGs
    assert len(find_images([csv_path, stills])) == 39 + 9
    result = CliRunner().invoke(cli, [str(a) for a in [
        "pretrain", "--images", csv_path, "--images", stills, "--out", tmp_path / "run", "--model",
        "mae_vit_tiny_patch16", "--img-size", 32, "--patch-size", 8, "--epochs", 1,
        "--batch-size", 8, "--accum-iter", 1, "--warmup-epochs", 1, "--decoder-embed-dim", 32,
        "--decoder-depth", 1, "--decoder-num-heads", 2, "--workers", 0, "--device", "cpu",
        "--no-bf16", "--json"]])
    assert result.exit_code == 0, result.output
    assert f"warning: {csv_path}:9: 2 pixel values, expected 2304; row skipped" in result.output
    summary = json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))
    assert summary["images"] == 48 and summary["epochs_done"] == 1 and summary["unreadable"] == 0
    assert (tmp_path / "run" / "checkpoint-last.pt").is_file()
