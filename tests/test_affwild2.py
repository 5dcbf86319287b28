"""The Aff-Wild2 reader: layout discovery, label parsing, masks, and one test per kind of bad
input."""

import numpy as np
import pytest

from pipeline.data.affwild2 import AffWild2, parse_annotation, source_video
from pipeline.errors import InputError
from tests.conftest import write_annotation, write_images


def test_discovers_videos_across_image_roots(mini_root):
    ds = AffWild2(mini_root)
    assert sorted(ds.videos) == ["105", "vid_left"]
    assert ds.videos["vid_left"].frames.tolist() == [1, 2, 4, 5]
    assert ds.videos["105"].image_path(3).name == "00003.jpg"
    assert ds.videos["105"].image_path(3).exists()


def test_annotation_rows_are_frames_and_markers_are_masks(mini_root):
    ds = AffWild2(mini_root)
    va = ds.annotations("va", "Train_Set")["vid_left"]
    assert va.labels.shape == (6, 2) and va.labels.dtype == np.float32
    assert va.valid.tolist() == [True, False, True, True, True, True]
    np.testing.assert_allclose(va.labels[2], [0.3, -0.4])
    expr = ds.annotations("expr", "Train_Set")["vid_left"]
    assert (expr.labels.tolist() == [0, 7, -1, 4, 4]
            and expr.valid.tolist() == [True, True, False, True, True])
    au = ds.annotations("au", "Validation_Set")["105"]
    assert au.labels.shape == (3, 12) and au.valid.tolist() == [True, False, True]


def test_num_frames_is_longest_of_images_and_annotations(mini_root):
    ds = AffWild2(mini_root)
    assert ds.num_frames("vid_left") == 6  # VA annotation runs past the last image (5)
    assert ds.num_frames("105") == 3


def test_source_of_left_right_pairs():
    assert source_video("video10_1_left") == "video10_1"
    assert source_video("video10_1_right") == "video10_1"
    assert source_video("4-30-1920x1080") == "4-30-1920x1080"


def test_crlf_and_trailing_blank_lines(tmp_path):
    path = tmp_path / "v.txt"
    path.write_bytes(b"valence,arousal\r\n0.5,0.5\r\n-0.1,0.2\r\n\r\n")
    ann = parse_annotation(path, "va")
    assert ann.labels.shape == (2, 2)


def test_older_expr_folder_name(tmp_path):
    root = tmp_path / "r"
    write_images(root, "v", [1, 2])
    write_annotation(root, "EXPR_Classification_Challenge", "Train_Set", "v", "expr", ["1", "2"])
    assert AffWild2(root).annotations("expr", "Train_Set")["v"].labels.tolist() == [1, 2]


@pytest.mark.parametrize(
    ("task", "content", "expected"),
    [
        ("va", "0.1,0.2\n", ":1: wrong or missing header"),
        ("va", "valence,arousal,extra\n0.1,0.2\n", ":1: wrong or missing header"),
        ("va", "valence,arousal\n0.1,0.2\n0.1\n", ":3: 1 fields, expected 2"),
        ("au", "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26\n0,1\n",
         ":2: 2 fields, expected 12"),
        ("va", "valence,arousal\n0.1,abc\n", ":2: non-numeric value"),
        ("va", "valence,arousal\n0.1,1.5\n", ":2: label out of range"),
        ("va", "valence,arousal\n0.1,0.2\nnan,0.1\n", ":3: non-finite value"),
        ("expr", "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n3\n8\n",
         ":3: label out of range"),
        ("expr", "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n2.5\n",
         ":2: label out of range"),
        ("au", "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26\n0,1,0,0,0,0,0,0,0,0,0,2\n",
         ":2: label out of range"),
        ("va", "", "empty annotation file"),
        ("va", "\n\n", "empty annotation file"),
        ("va", "valence,arousal\n", "header only"),
    ],
)
def test_malformed_annotation_names_file_and_line(tmp_path, task, content, expected):
    path = tmp_path / "bad_video.txt"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        parse_annotation(path, task)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_annotated_video_without_images_is_listed_with_its_length(mini_root):
    write_annotation(mini_root, "VA_Estimation_Challenge", "Train_Set", "ghost", "va",
                     ["0.1,0.1", "0.2,0.2"])
    ds = AffWild2(mini_root)
    assert "ghost" in ds.annotations("va", "Train_Set") and "ghost" not in ds.videos
    assert ds.num_frames("ghost") == 2
    assert ds.listed_videos() == ["105", "ghost", "vid_left"]
    assert ds.imageless_videos() == {"ghost": 2}


def test_annotations_of_other_images_are_refused(tmp_path):
    root = tmp_path / "r"
    write_images(root, "a", [1])
    write_annotation(root, "VA_Estimation_Challenge", "Train_Set", "b", "va", ["0.1,0.1"])
    with pytest.raises(InputError,
                       match="Train_Set: none of its 1 annotated videos .*'b'.* has images"):
        AffWild2(root).annotations("va", "Train_Set")


def test_test_video_without_images_takes_its_length_from_the_example_file(mini_root):
    lists = mini_root / "names_of_videos_in_each_test_set"
    lists.mkdir()
    (lists / "Valence_Arousal_Estimation_Challenge_test_set_release.txt").write_text(
        "105\nnoface\n")
    rows = ([f"105/{k:05d}.jpg,0,0" for k in (1, 2, 3)]
            + [f"noface/{k:05d}.jpg,0,0" for k in range(1, 8)])
    (mini_root / "CVPR_6th_ABAW_VA_test_set_example.txt").write_text(
        "image_location,valence,arousal\n" + "\n".join(rows) + "\n")
    ds = AffWild2(mini_root)
    assert ds.test_videos("va") == ["105", "noface"]  # no error: a listed video like any other
    assert ds.num_frames("noface") == 7
    assert ds.num_frames("105") == 3  # images and annotations give the length when there are any
    assert ds.imageless_videos() == {"noface": 7}


@pytest.mark.parametrize("width", [4, 5, 6, 7])
def test_frames_keep_their_real_file_names(tmp_path, width):
    d = tmp_path / "r" / "cropped_aligned" / "v"
    d.mkdir(parents=True)
    for k in (1, 2, 10):
        (d / f"{k:0{width}d}.jpg").write_bytes(b"")
    video = AffWild2(tmp_path / "r").videos["v"]
    assert video.frames.tolist() == [1, 2, 10]
    assert video.image_path(10).name == f"{10:0{width}d}.jpg" and video.image_path(10).exists()
    with pytest.raises(KeyError, match="no image for frame 3"):
        video.image_path(3)


@pytest.mark.parametrize(("names", "expected"), [
    (["1.jpg", "00001.jpg"], "00001.jpg and 1.jpg are both frame 1"),
    (["00000.jpg", "00001.jpg"], "frame number 0; frames are numbered from 1"),
    (["00001.jpg", "00002.png"], "mixed image suffixes"),
])
def test_ambiguous_frame_names_are_refused(tmp_path, names, expected):
    d = tmp_path / "r" / "cropped_aligned" / "v"
    d.mkdir(parents=True)
    for name in names:
        (d / name).write_bytes(b"")
    with pytest.raises(InputError, match=expected):
        AffWild2(tmp_path / "r").videos  # noqa: B018


def test_duplicate_video_across_roots(mini_root):
    write_images(mini_root, "105", [1], folder="cropped_aligned")
    with pytest.raises(InputError, match="'105' is in two image roots"):
        AffWild2(mini_root).videos  # noqa: B018


def test_missing_folders(tmp_path):
    with pytest.raises(InputError, match="dataset folder not found"):
        AffWild2(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no cropped_aligned"):
        AffWild2(tmp_path / "empty")


def test_missing_split_folder(mini_root):
    with pytest.raises(InputError, match="no AU_Detection_Challenge/Train_Set/ folder"):
        AffWild2(mini_root).annotations("au", "Train_Set")
