"""The feature store: round trips in both containers, plain zarr/h5py readers, resumability,
attribute checks, fill modes, packing, export, verify, merging, and two processes writing one Zarr
store."""

import json
import multiprocessing as mp
import shutil
import zipfile

import h5py
import numpy as np
import pytest
import zarr
import zarr.storage
from click.testing import CliRunner

import features
from cli import cli
from features.fill import fill_absent

D = 8  # feature width of the test stores


def make_attrs(**over) -> dict:
    attrs = {
        "encoder": "mae_vit_tiny_patch16", "encoder_config": {"depth": 2, "embed_dim": D},
        "checkpoint_sha256": "ab" * 32, "input_size": 112, "pixel_mean": [0.5, 0.5, 0.5],
        "pixel_std": [0.25, 0.25, 0.25], "pooling": "cls", "feature_dim": D, "dtype": "float16",
        "splits": ["Train_Set"],
    }
    attrs.update(over)
    return attrs


def make_video(t: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, D) float32 rows and (T,) present flags with gaps."""
    rng = np.random.default_rng(seed)
    present = rng.random(t) > 0.3
    present[0] = True
    return rng.standard_normal((t, D)).astype(np.float32), present


def stored(feats: np.ndarray, present: np.ndarray, dtype=np.float16) -> np.ndarray:
    """What the store must hold: absent rows zero, cast to the store dtype."""
    return np.where(present[:, None], feats, 0).astype(dtype)


def write_video(writer, name: str, feats, present, block: int = 3) -> None:
    vw = writer.begin_video(name, len(present))
    for a in range(0, len(present), block):  # blocks that do not line up with the chunks
        vw.write(a, feats[a:a + block], present[a:a + block])
    vw.finish()


VIDEOS = {"vid_left": make_video(13, 0), "105": make_video(4, 1),
          "4-30-1920x1080": make_video(9, 2)}


@pytest.fixture(params=["zarr", "h5"])
def store_path(request, tmp_path):
    path = tmp_path / f"feats.{request.param}"
    with features.create_store(path, make_attrs(), chunk_rows=4) as w:
        for name, (f, p) in VIDEOS.items():
            write_video(w, name, f, p)
    return path


def test_round_trip(store_path):
    with features.open_store(store_path) as s:
        assert s.videos() == sorted(VIDEOS)
        assert s.feature_dim == D and s.dtype == np.float16
        assert s.attrs["checkpoint_sha256"] == "ab" * 32 and s.attrs["encoder_config"]["depth"] == 2
        assert s.attrs["format"] == "mae-affect-features" and s.attrs["format_version"] == 1
        for name, (f, p) in VIDEOS.items():
            got_f, got_p = s.read(name)
            assert s.num_frames(name) == len(p)
            assert got_f.dtype == np.float16
            np.testing.assert_array_equal(got_f, stored(f, p))
            np.testing.assert_array_equal(got_p, p)
        info = s.info()
        assert info["videos"] == 3 and info["frames"] == 26 and info["bytes"] > 0
        assert info["present_frames"] == sum(int(p.sum()) for _, p in VIDEOS.values())


def test_plain_zarr_and_h5py_read_the_same_values(store_path):
    f, p = VIDEOS["vid_left"]
    if store_path.suffix == ".zarr":
        root = zarr.open_group(store_path, mode="r")
        attrs = dict(root.attrs)
        group = root["videos/vid_left"]
        got_f, got_p, complete = group["features"][:], group["present"][:], group.attrs["complete"]
    else:
        with h5py.File(store_path, "r") as h:
            attrs = json.loads(h.attrs["attrs_json"])
            assert h.attrs["feature_dim"] == D  # mirrored natively too
            group = h["videos/vid_left"]
            got_f, got_p, complete = (group["features"][:], group["present"][:],
                                      group.attrs["complete"])
    assert attrs["pooling"] == "cls" and attrs["feature_dim"] == D and complete
    np.testing.assert_array_equal(got_f, stored(f, p))
    np.testing.assert_array_equal(got_p, p)


def test_incomplete_video_is_not_listed_and_is_redone(store_path):
    f, p = make_video(10, 5)
    with features.create_store(store_path, make_attrs(), chunk_rows=4) as w:
        vw = w.begin_video("killed", 10)
        vw.write(0, f[:6], p[:6])  # the run dies here: no finish()
    with features.open_store(store_path) as s:
        assert "killed" not in s.videos() and s.incomplete_videos() == ["killed"]
        with pytest.raises(features.StoreError, match="incomplete"):
            s.read("killed")
    with features.create_store(store_path, make_attrs(), chunk_rows=4) as w:
        assert w.completed() == set(VIDEOS)
        write_video(w, "killed", f, p)
    with features.open_store(store_path) as s:
        assert "killed" in s.videos() and not s.incomplete_videos()
        np.testing.assert_array_equal(s.read("killed")[0], stored(f, p))


@pytest.mark.parametrize("key, value", [("checkpoint_sha256", "cd" * 32), ("pooling", "mean"),
                                        ("feature_dim", 16), ("encoder", "mae_vit_base_patch16")])
def test_reopen_refuses_different_identity(store_path, key, value):
    with pytest.raises(features.StoreError, match=key):
        features.create_store(store_path, make_attrs(**{key: value}))
    with features.create_store(store_path, make_attrs(**{key: value}), overwrite=True) as w:
        assert w.completed() == set()
    with features.open_store(store_path) as s:
        assert s.videos() == [] and s.attrs[key] == value


def test_a_format_the_suffix_contradicts_is_refused_and_nothing_is_made(tmp_path):
    for name, fmt, named in [("x.h5", "zarr", "hdf5"), ("x.zarr", "hdf5", "zarr"),
                             ("x.zarr.zip", "zarr", "zip")]:
        with pytest.raises(features.StoreError, match=f"says format {named}, not {fmt}"):
            features.create_store(tmp_path / name, make_attrs(), format=fmt)
    assert not any(tmp_path.iterdir())
    # a store under a file: named, nothing made
    (tmp_path / "notes.zarr").write_text("mine")
    with pytest.raises(features.StoreError, match="notes.zarr is a file, not a folder"):
        features.create_store(tmp_path / "notes.zarr" / "sub.zarr", make_attrs())
    (tmp_path / "notes.zarr").unlink()
    # a format that cannot be written is named as such, whatever the suffix
    with pytest.raises(features.StoreError, match="cannot write a 'zip' store"):
        features.create_store(tmp_path / "x.h5", make_attrs(), format="zip")
    # an existing store is appended to in the container it is (merge_stores into a Zarr store
    # an earlier version let extract name out.h5)
    misnamed = tmp_path / "made-earlier.zarr"
    features.create_store(misnamed, make_attrs()).close()
    misnamed = misnamed.rename(tmp_path / "out.h5")
    features.create_store(misnamed, make_attrs(), format="zarr").close()
    shutil.rmtree(misnamed)
    # a name without a store suffix takes the format given
    features.create_store(tmp_path / "feats.bin", make_attrs(), format="hdf5").close()
    with features.open_store(tmp_path / "feats.bin") as s:
        assert s.format == "hdf5"


def test_a_store_of_another_encoder_config_names_only_the_entries_that_differ(store_path):
    stored = make_attrs()["encoder_config"]
    changed = {**stored, "depth": stored["depth"] + 1}
    with pytest.raises(features.StoreError) as refused:
        features.create_store(store_path, make_attrs(encoder_config=changed))
    message = str(refused.value)
    assert f"encoder_config.depth (store {stored['depth']}, given {changed['depth']})" in message
    assert "embed_dim" not in message


def test_compute_dtype_is_compared_where_both_give_it(tmp_path):
    path = tmp_path / "f.zarr"
    features.create_store(path, make_attrs(compute_dtype="bfloat16")).close()
    differ = "compute_dtype .store 'bfloat16', given 'float32'"
    with pytest.raises(features.StoreError, match=differ):
        features.create_store(path, make_attrs(compute_dtype="float32"))
    features.create_store(path, make_attrs()).close()  # a writer that does not say: appends
    old = tmp_path / "old.zarr"  # a store written before the key existed does not say either
    features.create_store(old, make_attrs()).close()
    features.create_store(old, make_attrs(compute_dtype="float32")).close()


def test_append_keeps_videos_and_created(store_path):
    with features.open_store(store_path) as s:
        created = s.attrs["created"]
    with features.create_store(store_path, make_attrs(), chunk_rows=4) as w:
        write_video(w, "new", *make_video(5, 9))
    with features.open_store(store_path) as s:
        assert s.videos() == sorted([*VIDEOS, "new"]) and s.attrs["created"] == created


def test_bad_attrs_and_paths_are_refused(tmp_path):
    with pytest.raises(features.StoreError, match="checkpoint_sha256"):
        features.create_store(tmp_path / "a.zarr", {k: v for k, v in make_attrs().items()
                                                     if k != "checkpoint_sha256"})
    with pytest.raises(features.StoreError, match="dtype"):
        features.create_store(tmp_path / "a.zarr", make_attrs(dtype="bfloat16"))
    with pytest.raises(features.StoreError, match="not JSON-serialisable"):
        features.create_store(tmp_path / "a.zarr", make_attrs(extra=object()))
    precious = tmp_path / "images"
    precious.mkdir()
    (precious / "00001.jpg").write_bytes(b"x")
    with pytest.raises(features.StoreError, match="refusing to overwrite"):
        features.create_store(precious, make_attrs(), overwrite=True)
    assert (precious / "00001.jpg").exists()
    for path, match in [(tmp_path / "none.zarr", "no feature store"),
                        (precious, "without zarr.json"), (precious / "00001.jpg", "neither")]:
        with pytest.raises(features.StoreError, match=match):
            features.open_store(path)


def test_fill_modes():
    f = np.zeros((6, 2), np.float32)
    present = np.array([False, True, False, False, True, False])
    f[1], f[4] = [1, 10], [4, 40]
    np.testing.assert_array_equal(fill_absent(f.copy(), present, "zeros"), f)
    nearest = fill_absent(f.copy(), present, "nearest")
    np.testing.assert_array_equal(nearest[:, 0], [1, 1, 1, 4, 4, 4])
    linear = fill_absent(f.copy(), present, "linear")
    np.testing.assert_allclose(linear[:, 0], [1, 1, 2, 3, 4, 4])
    np.testing.assert_allclose(linear[:, 1], [10, 10, 20, 30, 40, 40])
    nothing = np.zeros((3, 2), np.float32)
    np.testing.assert_array_equal(fill_absent(nothing.copy(), np.zeros(3, bool), "linear"), nothing)
    with pytest.raises(features.StoreError, match="fill"):
        fill_absent(f, present, "previous")


def test_read_fill_never_changes_the_store(store_path):
    with features.open_store(store_path) as s:
        filled, present = s.read("vid_left", fill="nearest", dtype=np.float32)
        assert filled.dtype == np.float32 and np.abs(filled).sum(axis=1).all()
        raw, _ = s.read("vid_left")
        assert not raw[~present].any()


def test_load_all_offsets(store_path):
    with features.open_store(store_path) as s:
        packed = s.load_all()
        assert packed.features.dtype == np.float32 and packed.features.flags.c_contiguous
        assert packed.videos == sorted(VIDEOS)
        assert packed.features.shape == (26, D) and packed.present.shape == (26,)
        stops = [packed.offsets[v][1] for v in packed.videos]
        starts = [packed.offsets[v][0] for v in packed.videos]
        assert starts == [0, *stops[:-1]] and stops[-1] == 26
        for v in VIDEOS:
            got_f, got_p = packed.video(v)
            np.testing.assert_array_equal(got_f, s.read(v)[0].astype(np.float32))
            np.testing.assert_array_equal(got_p, s.read(v)[1])
        subset = s.load_all(videos=["vid_left", "105"], dtype=np.float16, fill="linear")
        assert subset.videos == ["vid_left", "105"] and subset.offsets["105"] == (13, 17)
        np.testing.assert_array_equal(subset.video("105")[0], s.read("105", fill="linear")[0])
        with pytest.raises(features.StoreError, match="'105' given twice to load_all"):
            s.load_all(videos=["105", "vid_left", "105"])


def test_out_of_order_writes_equal_in_order(tmp_path):
    f, p = make_video(11, 3)
    with features.create_store(tmp_path / "a.zarr", make_attrs(dtype="float32"), chunk_rows=4) as w:
        vw = w.begin_video("v", 11)
        for a in (8, 0, 5, 2):  # revisits chunks already written (read-modify-write)
            vw.write(a, f[a:a + 3], p[a:a + 3])
        vw.finish()
    with features.open_store(tmp_path / "a.zarr") as s:
        np.testing.assert_array_equal(s.read("v")[0], stored(f, p, np.float32))
        assert s.num_present("v") == int(p.sum())


def assert_same_stores(a, b) -> None:
    with features.open_store(a) as x, features.open_store(b) as y:
        assert x.attrs == y.attrs and x.videos() == y.videos()
        for v in x.videos():
            for got, want in zip(y.read(v), x.read(v), strict=True):
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(got, want)


def test_export_round_trips_exactly(store_path, tmp_path):
    other = ".zarr" if store_path.suffix == ".h5" else ".h5"
    there, back, zipped = (tmp_path / f"there{other}", tmp_path / f"back{store_path.suffix}",
                           tmp_path / "f.zarr.zip")
    features.export_store(store_path, there)
    features.export_store(there, back)
    features.export_store(store_path, zipped)
    for path in (there, back, zipped):
        assert_same_stores(store_path, path)
    with features.open_store(zipped) as s:
        assert s.format == "zip"
    zs = zarr.storage.ZipStore(zipped, mode="r")  # a collaborator with plain zarr
    f, p = VIDEOS["105"]
    np.testing.assert_array_equal(zarr.open_group(zs, mode="r")["videos/105/features"][:],
                                  stored(f, p))
    zs.close()
    with pytest.raises(features.StoreError, match="exists"):
        features.export_store(store_path, there)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("name, match", [("thesis.zarr", "not a feature store"),
                                         ("thesis", "suffix")])
def test_export_overwrite_refuses_a_folder_that_is_not_a_store(store_path, tmp_path, name, match):
    precious = tmp_path / name
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep")
    with pytest.raises(features.StoreError, match=match):
        features.export_store(store_path, precious, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "keep"


@pytest.mark.parametrize("name", ["out.txt", "out", "feats.zarr.tar"])
def test_export_and_merge_refuse_a_name_that_says_no_container(store_path, tmp_path, name):
    supported = r"\.zarr \(a directory\), \.zarr\.zip \(one zip file\) or \.h5/\.hdf5"
    with pytest.raises(features.StoreError, match=rf"{name}: its suffix .* {supported}"):
        features.export_store(store_path, tmp_path / name)
    with pytest.raises(features.StoreError, match=supported):
        features.merge_stores([store_path], tmp_path / name)
    assert not (tmp_path / name).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    features.export_store(store_path, tmp_path / "out.HDF5")  # the suffixes it names are taken
    with features.open_store(tmp_path / "out.HDF5") as s:
        assert s.format == "hdf5"


def test_damaged_zip_and_hdf5_are_store_errors(tmp_path):
    zipped = tmp_path / "f.zarr.zip"
    zipped.write_bytes(b"PK\x03\x04" + b"junk" * 20)
    with pytest.raises(features.StoreError, match="not a readable zip"):
        features.open_store(zipped)
    damaged = tmp_path / "f.h5"
    with h5py.File(damaged, "w") as f:
        f.attrs["attrs_json"] = "{not json"
        f.create_group("videos")
    with pytest.raises(features.StoreError, match="not valid JSON"):
        features.open_store(damaged)


def test_verify_catches_problems(store_path):
    expected = {v: len(p) for v, (_, p) in VIDEOS.items()}
    assert features.verify_store(store_path, expected) == []
    expected["vid_left"] = 14
    expected["gone"] = 7
    bad = np.full((2, D), np.nan, np.float32)
    with features.create_store(store_path, make_attrs(), chunk_rows=4) as w:
        vw = w.begin_video("105", 4)
        vw.write(0, bad, np.ones(2, bool))
        vw.finish()
    problems = features.verify_store(store_path, expected)
    text = "\n".join(problems)
    assert "video gone: missing" in text
    assert "video vid_left: 13 frames, the dataset says 14" in text
    assert "video 105: 2 frames hold NaN or Inf" in text
    assert len(problems) == 3
    with pytest.raises(features.StoreError, match="no feature store"):
        features.verify_store(store_path.with_name("nothing.zarr"))


def test_read_rows_refuses_rows_outside_the_video(store_path):
    with features.open_store(store_path) as s:
        f, p = s.read("vid_left")  # 13 rows
        for start, stop in [(0, None), (0, 13), (4, 9), (12, None), (13, 13), (0, 0)]:
            got_f, got_p = s.read_rows("vid_left", start, stop)
            np.testing.assert_array_equal(got_f, f[start:stop])
            np.testing.assert_array_equal(got_p, p[start:stop])
        for start, stop in [(-5, 5), (-1, None), (5, 3), (0, 14), (14, None)]:
            with pytest.raises(features.StoreError,
                               match=r"of video 'vid_left' .* 0 <= start <= stop <= 13"):
                s.read_rows("vid_left", start, stop)


def _chunked_store(path) -> None:
    """Video 'vid': 13 rows in chunks of 4, faces in chunks 0, 2 and 3 but none in chunk 1 (rows
    4..7), so that zarr stores no file for chunk 1; 'faceless' has no face and no chunk file."""
    f, p = make_video(13, 0)
    p[4:8], p[8], p[12] = False, True, True
    with features.create_store(path, make_attrs(), chunk_rows=4) as w:
        write_video(w, "vid", f, p)
        write_video(w, "105", *VIDEOS["105"])
        write_video(w, "faceless", np.zeros((6, D), np.float32), np.zeros(6, bool))


def _cli_verify(path):
    result = CliRunner().invoke(cli, ["features", "verify", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"junk" * 8,
                                    lambda b: b""], ids=["truncated", "garbled", "emptied"])
def test_a_damaged_chunk_is_named_not_a_crash(tmp_path, damage):
    path = tmp_path / "feats.zarr"
    _chunked_store(path)
    chunk = path / "videos/vid/features/c/2/0"
    chunk.write_bytes(damage(chunk.read_bytes()))
    problems = features.verify_store(path)
    assert len(problems) == 1
    assert "video 'vid', array 'features'" in problems[0] and "damaged" in problems[0]
    result = _cli_verify(path)
    assert result.exit_code == 1 and "video 'vid', array 'features'" in result.output
    named = r"feats.zarr: video 'vid', array 'features'.*damaged.*rerun `mae-affect extract`"
    with features.open_store(path) as s:
        for read in (s.load_all, lambda: s.read("vid"), lambda: s.read_rows("vid", 8, 12)):
            with pytest.raises(features.StoreError, match=named):
                read()
        assert s.read_rows("vid", 0, 8)[1].any()  # the other chunks still read
        s.load_all(["105", "faceless"])
    with pytest.raises(features.StoreError, match=named):
        features.export_store(path, tmp_path / "copy.h5")
    assert not (tmp_path / "copy.h5").exists()


def test_a_damaged_chunk_in_hdf5_is_named_not_read_as_other_numbers(tmp_path):
    path = tmp_path / "feats.h5"
    _chunked_store(path)
    with h5py.File(path, "r") as f:
        chunk = f["videos/vid/features"].id.get_chunk_info(2)  # rows 8..11
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset + 3] ^= 0xFF  # one byte of a stored value
    path.write_bytes(bytes(data))
    assert "video 'vid', array 'features'" in "".join(features.verify_store(path))
    with features.open_store(path) as s:
        with pytest.raises(features.StoreError, match="rows 8:12 cannot be read"):
            s.read_rows("vid", 8, 12)
        assert s.read_rows("vid", 0, 8)[1].any()  # the other chunks still read


def test_a_damaged_chunk_in_a_zip_is_named(tmp_path):
    _chunked_store(tmp_path / "feats.zarr")
    zipped = tmp_path / "feats.zarr.zip"
    features.export_store(tmp_path / "feats.zarr", zipped)
    with zipfile.ZipFile(zipped) as zf:
        member = zf.getinfo("videos/vid/features/c/0/0")
    data = bytearray(zipped.read_bytes())
    data[member.header_offset + 30 + len(member.filename) + len(member.extra) + 5] ^= 0xFF
    zipped.write_bytes(bytes(data))
    assert "video 'vid', array 'features'" in "".join(features.verify_store(zipped))
    with features.open_store(zipped) as s, pytest.raises(features.StoreError, match="export"):
        s.load_all()


@pytest.mark.parametrize("lost, match", [
    (["features/c/2/0"], "has chunk files missing"), (["present/c/2"], "num_present says"),
    (["features/c/2/0", "present/c/2"], "num_present says"),
])
def test_a_missing_chunk_is_found(tmp_path, lost, match):
    path = tmp_path / "feats.zarr"
    _chunked_store(path)
    assert not (path / "videos/vid/features/c/1").exists()  # no face, no file: that is sound
    assert features.verify_store(path) == []
    for name in lost:
        (path / "videos/vid" / name).unlink()
    problems = features.verify_store(path)
    assert any(f"feats.zarr: video 'vid' {match}" in p or
               f"feats.zarr: video 'vid': {match}" in p for p in problems), problems
    assert all("vid" in p for p in problems)
    assert "video 'vid'" in _cli_verify(path).output
    with features.open_store(path) as s:
        for read in (s.load_all, lambda: s.read("vid")):
            with pytest.raises(features.StoreError, match=f"video 'vid'.? {match}"):
                read()
        s.load_all(["105", "faceless"])
    with pytest.raises(features.StoreError, match=match):
        features.export_store(path, tmp_path / "copy.zarr")


def test_a_store_written_with_every_chunk_verifies(tmp_path):
    path = tmp_path / "feats.zarr"
    with zarr.config.set({"array.write_empty_chunks": True}):
        _chunked_store(path)
    assert (path / "videos/vid/features/c/1/0").exists()
    assert features.verify_store(path) == []
    (path / "videos/vid/features/c/3/0").unlink()
    assert "has chunk files missing" not in "".join(features.verify_store(path))  # hidden: 4 > 3
    (path / "videos/vid/present/c/3").unlink()
    assert "num_present says 5, 'present' has 4" in "".join(features.verify_store(path))


def test_rows_never_written_are_no_missing_chunk(tmp_path):
    """Extraction leaves rows without an image unwritten (an annotation longer than the frames):
    with write_empty_chunks, the written chunks have files and the tail none."""
    path = tmp_path / "feats.zarr"
    f, p = make_video(13, 0)
    with zarr.config.set({"array.write_empty_chunks": True}):
        with features.create_store(path, make_attrs(), chunk_rows=4) as w:
            vw = w.begin_video("tail", 13)
            vw.write(0, f[:6], np.arange(6) < 2)  # faces in chunk 0 only; rows 6.. never written
            vw.finish()
    assert features.verify_store(path) == []
    with features.open_store(path) as s:
        assert s.read("tail")[1].sum() == 2


def test_merge_hdf5_parts(tmp_path):
    parts = [features.part_path(tmp_path / "feats.h5", r) for r in range(2)]
    assert parts[1].name == "feats.part1.h5"
    names = sorted(VIDEOS)
    for rank, part in enumerate(parts):
        with features.create_store(part, make_attrs(), chunk_rows=4) as w:
            for name in names[rank::2]:
                write_video(w, name, *VIDEOS[name])
    out = tmp_path / "feats.h5"
    features.merge_stores(parts, out)
    with features.open_store(out) as s:
        assert s.videos() == names
        np.testing.assert_array_equal(s.read("vid_left")[0], stored(*VIDEOS["vid_left"]))
    with features.create_store(parts[0], make_attrs(), chunk_rows=4) as w:
        write_video(w, "late", *make_video(6, 7))
    features.merge_stores(parts, out)  # appends into the existing store, skipping complete videos
    with features.open_store(out) as s:
        assert s.videos() == sorted([*names, "late"])
    with pytest.raises(features.StoreError, match="in both"):
        features.merge_stores([parts[0], parts[0]], tmp_path / "dup.h5")
    # an existing HDF5 store of another name (extract --format hdf5 --store feats.bin under
    # torchrun makes it first, then merges the parts into it) is appended to as HDF5
    odd = tmp_path / "feats.bin"
    features.create_store(odd, make_attrs(), format="hdf5", chunk_rows=4).close()
    features.merge_stores(parts, odd)
    with features.open_store(odd) as s:
        assert s.format == "hdf5" and s.videos() == sorted([*names, "late"])


def _worker(path: str, names: list[str]) -> None:
    with features.create_store(path, make_attrs(), role="worker", chunk_rows=4) as w:
        for name in names:
            write_video(w, name, *VIDEOS[name])


def test_two_processes_write_one_zarr_store(tmp_path):
    path = tmp_path / "feats.zarr"
    main = features.create_store(path, make_attrs(), role="main", chunk_rows=4)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(path), names))
             for names in (["vid_left"], ["105", "4-30-1920x1080"])]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    main.close()  # after every worker: consolidates
    with features.open_store(path) as s:
        assert s.consolidated and s.videos() == sorted(VIDEOS)
    assert features.verify_store(path, {v: len(p) for v, (_, p) in VIDEOS.items()}) == []


def test_verify_names_native_hdf5_attributes_that_differ_from_attrs_json(tmp_path):
    path = tmp_path / "feats.h5"
    with features.create_store(path, make_attrs(), chunk_rows=4) as w:
        write_video(w, "105", *VIDEOS["105"])
    assert features.verify_store(path) == []
    with h5py.File(path, "r+") as f:
        f.attrs["pooling"], f.attrs["input_size"] = "mean", 999  # attrs_json says cls, 112
    problems = features.verify_store(path)
    assert len(problems) == 1 and "input_size, pooling differ from attrs_json" in problems[0]
    features.export_store(path, tmp_path / "again.h5")
    assert features.verify_store(tmp_path / "again.h5") == []
    with h5py.File(tmp_path / "again.h5", "r") as f:
        assert f.attrs["pooling"] == "cls" and f.attrs["input_size"] == 112


def test_stale_consolidated_listing_is_reported_and_fixed(tmp_path):
    path = tmp_path / "feats.zarr"
    with features.create_store(path, make_attrs(), chunk_rows=4) as w:
        write_video(w, "105", *VIDEOS["105"])
    with pytest.raises(features.StoreError, match="HDF5 file has one writer"):
        features.create_store(tmp_path / "x.h5", make_attrs(), role="worker")
    with features.create_store(path, make_attrs(), role="worker", chunk_rows=4) as w:
        write_video(w, "vid_left", *VIDEOS["vid_left"])  # after the main process consolidated
    problems = features.verify_store(path)
    assert any("consolidated metadata lists 1" in p
               and f"run `mae-affect features consolidate {path}`" in p for p in problems)
    result = CliRunner().invoke(cli, ["features", "consolidate", str(path)])
    assert result.exit_code == 0 and "listing rewritten" in result.output, result.output
    assert features.verify_store(path) == []
    features.create_store(tmp_path / "y.h5", make_attrs()).close()
    result = CliRunner().invoke(cli, ["features", "consolidate", str(tmp_path / "y.h5")])
    assert (result.exit_code == 2 and result.output.count("\n") == 1
            and "y.h5 is not a Zarr directory store" in result.output), result.output
    with features.create_store(path, make_attrs()):  # the main writer drops the listing while open
        with features.open_store(path) as s:
            assert not s.consolidated and s.videos() == ["105", "vid_left"]


def test_cli_info_verify_export(mini_root, tmp_path):
    store = tmp_path / "feats.zarr"
    with features.create_store(store, make_attrs(), chunk_rows=4) as w:
        write_video(w, "vid_left", *make_video(6, 0))
    run = CliRunner().invoke
    info = run(cli, ["features", "info", str(store), "--data", str(mini_root), "--json"])
    assert info.exit_code == 0, info.output
    result = json.loads(info.output)
    assert result["videos"] == 1 and result["frames"] == 6
    assert result["splits"]["va/Train_Set"] == {"videos": 1, "annotated": 1, "frames": 6}
    assert result["splits"]["au/Validation_Set"]["videos"] == 0
    assert "encoder     mae_vit_tiny_patch16" in run(cli, ["features", "info", str(store)]).output

    bad = run(cli, ["features", "verify", str(store), "--data", str(mini_root)])
    assert (bad.exit_code == 1
            and "video 105: missing (the dataset has it with 3 frames)" in bad.output)
    with features.create_store(store, make_attrs(), chunk_rows=4) as w:
        write_video(w, "105", *make_video(3, 1))
    good = run(cli, ["features", "verify", str(store), "--data", str(mini_root), "--json"])
    assert good.exit_code == 0 and json.loads(good.output)["ok"]

    out = tmp_path / "feats.h5"
    assert run(cli, ["features", "export", str(store), str(out)]).exit_code == 0
    assert_same_stores(store, out)
    again = run(cli, ["features", "export", str(store), str(out)])
    assert again.exit_code == 2 and "exists" in again.output
    missing = run(cli, ["features", "info", str(tmp_path / "none.zarr")])
    assert missing.exit_code == 2 and "no feature store" in missing.output


def tree(path) -> dict:
    """Every file under ``path`` (or the file itself) with its bytes: a snapshot to compare."""
    from pathlib import Path

    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): p.read_bytes() for p in files}


def big_store(path, videos: int = 6, frames: int = 700) -> None:
    with features.create_store(path, make_attrs()) as w:
        for i in range(videos):
            write_video(w, f"v{i}", *make_video(frames, i), block=256)


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.95])
def test_a_truncated_hdf5_store_of_ours_is_replaced_by_overwrite(tmp_path, keep):
    path = tmp_path / "feats.h5"
    big_store(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])  # a kill or a full disk mid-write
    with pytest.raises(features.StoreError, match="--overwrite"):
        features.open_store(path)
    with pytest.raises(features.StoreError, match="--overwrite"):
        features.create_store(path, make_attrs())  # without overwrite: refused, untouched
    assert features.format.damaged_store_of_ours(path)
    with features.create_store(path, make_attrs(), overwrite=True) as w:
        write_video(w, "105", *VIDEOS["105"])
    assert features.verify_store(path) == [] and features.open_store(path).videos() == ["105"]


def test_damaged_zarr_and_zip_stores_of_ours_are_replaced(tmp_path):
    zarr_path = tmp_path / "feats.zarr"
    big_store(zarr_path, videos=2, frames=10)
    root_json = zarr_path / "zarr.json"
    root_json.write_bytes(root_json.read_bytes()[:-40])  # broken JSON, still naming our format
    with pytest.raises(features.StoreError):
        features.open_store(zarr_path)
    features.create_store(zarr_path, make_attrs(), overwrite=True).close()
    assert features.open_store(zarr_path).videos() == []
    big_store(tmp_path / "src.zarr", videos=2, frames=10)
    zipped = tmp_path / "feats.zarr.zip"
    features.export_store(tmp_path / "src.zarr", zipped)
    zipped.write_bytes(zipped.read_bytes()[:-100])  # its end (the zip's directory) lost
    with pytest.raises(features.StoreError):
        features.open_store(zipped)
    features.export_store(tmp_path / "src.zarr", zipped, overwrite=True)
    assert features.open_store(zipped).videos() == ["v0", "v1"]


def _foreign_hdf5(path) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("weights", data=np.arange(100000, dtype=np.float32))
        f.attrs["note"] = "a model of someone else's"


def _foreign_truncated_hdf5(path) -> None:
    _foreign_hdf5(path)
    path.write_bytes(path.read_bytes()[:5000])


def _foreign_zarr(path) -> None:
    zarr.open_group(path, mode="w", attributes={"format": "someone-else"}).create_group("videos")


def _foreign_folder(path) -> None:
    path.mkdir()
    (path / "thesis.tex").write_text("keep")


def _store_holding_a_checkpoint(path) -> None:
    """A sound store into which someone wrote a run (pretrain --out feats.zarr did, once)."""
    features.create_store(path, make_attrs()).close()
    (path / "checkpoint-last.pt").write_bytes(b"hours of training")


def test_overwrite_takes_what_a_killed_write_of_ours_leaves(tmp_path):
    path = tmp_path / "f.zarr"
    features.create_store(path, make_attrs()).close()
    (path / "zarr.0123abcd.partial").write_text("{")  # zarr's temp file of a killed rewrite
    (path / ".DS_Store").write_bytes(b"")
    features.create_store(path, make_attrs(), overwrite=True).close()
    assert sorted(p.name for p in path.iterdir()) == ["videos", "zarr.json"]
    # names only like those are someone's: refused
    for name in ("zarr.json.bak", ".git"):
        (path / name).mkdir()
        with pytest.raises(features.StoreError, match=f"holds {name}, not ours"):
            features.create_store(path, make_attrs(), overwrite=True)
        (path / name).rmdir()


def _text_file(path) -> None:
    path.write_text("a results table\n")


def _foreign_zip(path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("zarr.json", '{"zarr_format": 3, "node_type": "group"}')


@pytest.mark.parametrize("make, name", [
    (_foreign_hdf5, "model.h5"), (_foreign_truncated_hdf5, "feats.h5"),
    (_foreign_zarr, "feats.zarr"), (_foreign_folder, "feats.zarr"), (_text_file, "feats.h5"),
    (_foreign_zip, "feats.zarr.zip"), (_store_holding_a_checkpoint, "feats.zarr"),
])
def test_overwrite_never_deletes_what_is_not_a_store_of_ours(tmp_path, make, name):
    path = tmp_path / name
    make(path)
    before = tree(path)
    # a .zip is refused as a format create_store cannot write, before anything is opened
    refused = ("cannot write a 'zip'" if name.endswith(".zip") else
               "holds checkpoint-last.pt, not ours" if make is _store_holding_a_checkpoint else
               "not a feature store")
    with pytest.raises(features.StoreError, match=refused):
        features.create_store(path, make_attrs(), overwrite=True)
    with pytest.raises(features.StoreError, match=refused.replace("cannot write a 'zip'",
                                                                  "not a feature store")):
        features.export_store(_a_store(tmp_path), path, overwrite=True)
    assert tree(path) == before


def _a_store(tmp_path):
    path = tmp_path / "source.zarr"
    if not path.exists():
        big_store(path, videos=1, frames=4)
    return path


@pytest.mark.parametrize("change", ["delete", "incomplete", "delete_array"])
def test_a_store_changed_by_hand_reads_as_verify_sees_it(tmp_path, change):
    path = tmp_path / "feats.zarr"
    with features.create_store(path, make_attrs(), chunk_rows=4) as w:
        for name, (f, p) in VIDEOS.items():
            write_video(w, name, f, p)
    root = zarr.open_group(path, mode="r+")  # a collaborator, with plain zarr
    if change == "delete":
        del root["videos/105"]
    elif change == "incomplete":
        root["videos/105"].attrs["complete"] = False
    else:
        del root["videos/105/features"]
    listing = zarr.open_group(path, mode="r").metadata.consolidated_metadata.flattened_metadata
    assert listing["videos/105"].attributes["complete"] is True  # zarr left the listing as it was
    problems = features.verify_store(path)
    assert problems
    assert any("105" in p for p in problems)
    with features.open_store(path) as s:
        # what verify sees: not a video of zeros
        assert s.videos() == ["4-30-1920x1080", "vid_left"]
        assert s.info()["videos"] == 2 and s.info()["listing_stale"]
        with pytest.raises(features.StoreError, match="105"):
            s.read("105")
        with pytest.raises(features.StoreError, match="105"):
            s.load_all(["105"])
    # a writer (extraction's) redoes it, and the listing is consolidated again
    with features.create_store(path, make_attrs(), chunk_rows=4) as w:
        assert w.completed() == {"4-30-1920x1080", "vid_left"}
        write_video(w, "105", *VIDEOS["105"])
    assert features.verify_store(path) == []
    with features.open_store(path, use_consolidated=True) as s:
        np.testing.assert_array_equal(s.read("105")[0], stored(*VIDEOS["105"]))
