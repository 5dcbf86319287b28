"""Format version 1 of the mae-affect feature store: names, attributes and their checks.

The logical layout is the same in Zarr 3 and HDF5 (``docs/feature-store.md``):

    /                           attrs: format, format_version, encoder, encoder_config, ...
    /videos/<video>/features    (T, D) float16 | float32; row i = frame i+1;
                                absent frames are zero rows
    /videos/<video>/present     (T,) bool; true where the frame had a face image
    /videos/<video>             attrs: complete (written last), num_frames, num_present

HDF5 attributes cannot hold dicts, so an HDF5 root also carries ``attrs_json``, the whole attribute
dict as JSON (the authoritative copy); each attribute is mirrored natively where HDF5 allows it.
"""

import json
import math
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from .errors import StoreError

FORMAT_NAME = "mae-affect-features"
FORMAT_VERSION = 1
VIDEOS = "videos"
FEATURES = "features"
PRESENT = "present"
# (1024, 768) float16 = 1.5 MiB a chunk: a 50,000-frame video streams in 49 chunks
CHUNK_ROWS = 1024
DTYPES = ("float16", "float32")
H5_ATTRS_JSON = "attrs_json"

# Attributes that say how the features were made: appending to a store requires them to be equal.
IDENTITY_KEYS = (
    "encoder", "encoder_config", "checkpoint_sha256", "input_size", "pixel_mean", "pixel_std",
    "pooling", "feature_dim", "dtype",
)
# Attributes that, where a store has them, say more of how the features were computed (the
# precision the encoder ran in): appending requires them equal when the store and the writer both
# give them (a store written before such a key existed does not say, and is not refused for it).
OPTIONAL_IDENTITY_KEYS = ("compute_dtype",)
WRITE_FORMATS = ("zarr", "hdf5")


def tool_version() -> str:
    try:
        return metadata.version("mae-affect")
    except metadata.PackageNotFoundError:
        return "unknown"


def _jsonable(key: str, value) -> object:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise StoreError(f"store attribute {key!r} is not JSON-serialisable ({e}): give plain "
                         "numbers, strings, lists or dicts") from e


def check_feature_spec(attrs: dict, where: str) -> None:
    """feature_dim a positive int and dtype one of DTYPES, else StoreError naming ``where``."""
    dim = attrs.get("feature_dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise StoreError(f"{where}: feature_dim must be a positive integer, got {dim!r}")
    if attrs.get("dtype") not in DTYPES:
        raise StoreError(f"{where}: dtype must be one of {', '.join(DTYPES)}, "
                         f"got {attrs.get('dtype')!r}")


def normalise_attrs(attrs: dict) -> dict:
    """The root attributes of a new store: the given ones as plain JSON values, checked, with
    format, format_version, created and tool_version filled in (given created/tool_version win,
    so that an export keeps those of its source)."""
    given = {str(k): _jsonable(str(k), v) for k, v in dict(attrs).items()}
    missing = [k for k in IDENTITY_KEYS if k not in given]
    if missing:
        raise StoreError(f"store attributes lack {', '.join(missing)}: give them in attrs "
                         "(the extraction stage takes them from the encoder and checkpoint)")
    if given.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise StoreError(f"store attribute format must be {FORMAT_NAME!r}, got {given['format']!r}")
    if given.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise StoreError(f"this version writes format_version {FORMAT_VERSION}, "
                         f"got {given['format_version']!r}")
    check_feature_spec(given, "store attributes")
    out = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    out["created"] = given.pop("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    out["tool_version"] = given.pop("tool_version", tool_version())
    given.pop("format", None)
    given.pop("format_version", None)
    out.update(given)
    return out


def identity_differences(stored: dict, given: dict) -> list[str]:
    """'key (store X, given Y)' for every identity attribute that differs (an optional one only
    where both give it); of a dict attribute (``encoder_config``), its differing entries only
    ('encoder_config.embed_dim (store 192, given 384)')."""
    keys = ["format_version", *IDENTITY_KEYS,
            *(k for k in OPTIONAL_IDENTITY_KEYS if k in stored and k in given)]
    differ = []
    for k in keys:
        a, b = stored.get(k), given.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            differ += [f"{k}.{sub} (store {a.get(sub)!r}, given {b.get(sub)!r})"
                       for sub in sorted(a.keys() | b.keys()) if a.get(sub) != b.get(sub)]
        elif a != b:
            differ.append(f"{k} (store {a!r}, given {b!r})")
    return differ


def check_root_attrs(attrs: dict, path: Path) -> None:
    """StoreError unless ``attrs`` are those of a feature store this version can read."""
    if attrs.get("format") != FORMAT_NAME:
        raise StoreError(f"{path} is not a mae-affect feature store (root attribute format = "
                         f"{attrs.get('format')!r}, expected {FORMAT_NAME!r}): give a store made "
                         "by `mae-affect extract` or `features export`")
    version = attrs.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError(f"{path} has format_version {version!r}; this mae-affect reads up to "
                         f"{FORMAT_VERSION}: upgrade mae-affect")
    check_feature_spec(attrs, str(path))


def check_video_name(name: str) -> None:
    # Zarr 3 node names: no '/', not '.' or '..', not starting with '__' (reserved).
    if not name or "/" in name or name in (".", "..") or name.startswith("__"):
        raise StoreError(f"video name {name!r} cannot name a store group: it must be non-empty, "
                         "without '/', and not start with '__'")


def infer_format(path: Path) -> str:
    """'hdf5' for .h5/.hdf5, 'zip' for .zip (a zipped Zarr store), else 'zarr' (a directory)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "hdf5"
    if suffix == ".zip":
        return "zip"
    return "zarr"


# The names a new store gets from `export` and `merge`: the suffix says the container.
OUTPUT_SUFFIXES = {".zarr": "zarr", ".zip": "zip", ".h5": "hdf5", ".hdf5": "hdf5"}


def output_format(path: Path) -> str:
    """The container of a store to write at ``path`` by export or merge, from its suffix:
    'zarr' for .zarr, 'zip' for .zip (.zarr.zip), 'hdf5' for .h5/.hdf5. StoreError for any other
    name, which would otherwise make a Zarr directory under a name that hides it (``out.txt``)."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise StoreError(f"cannot write a store at {path}: its suffix {suffix or '(none)'} names "
                         "no container; end it in .zarr (a directory), .zarr.zip (one zip file) "
                         "or .h5/.hdf5 (HDF5)")
    return OUTPUT_SUFFIXES[suffix]


def suffix_contradiction(path, format: str | None) -> str | None:
    """What is wrong with writing a new ``format`` store at ``path`` whose suffix names another
    container (``x.h5`` as zarr), or None: a Zarr directory named .h5 would mislead every reader
    that goes by the name."""
    path = Path(path)
    named = OUTPUT_SUFFIXES.get(path.suffix.lower())
    if not format or not named or named == format:
        return None
    return (f"{path}: its suffix {path.suffix} says format {named}, not {format}: end the path in "
            f"{'.h5' if format == 'hdf5' else '.zarr'}, or leave the format to the suffix")


def sniff_format(path: Path) -> str:
    """The format of an existing store from its content: 'zarr', 'zip' or 'hdf5'."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"no feature store at {path}: check the path, or make one with "
                         "`mae-affect extract --store PATH`")
    if path.is_dir():
        if not (path / "zarr.json").is_file():
            raise StoreError(f"{path} is a directory without zarr.json, not a Zarr 3 feature "
                             "store: check the path")
        return "zarr"
    with open(path, "rb") as f:
        head = f.read(8)
    if head == HDF5_SIGNATURE:
        return "hdf5"
    if head[:4] == ZIP_SIGNATURE:
        return "zip"
    raise StoreError(f"{path} is neither a Zarr directory, a .zarr.zip nor an HDF5 file: "
                     "check the path")


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
# How far into a file its root attributes lie: an HDF5 store gets them (the whole attribute dict as
# JSON, and a native mirror) in the root group's header when it is created, before any video, and a
# .zarr.zip holds the root zarr.json as its first member.
HEAD_BYTES = 1 << 20


def damaged_store_of_ours(path: Path) -> bool:
    """Whether ``path``, which does not open as a store, is a store of ours that was damaged
    (an HDF5 file truncated by a kill or a full disk, a root ``zarr.json`` broken by hand): the only
    thing besides a sound store that ``--overwrite`` may delete.

    The rule: an HDF5 file (its 8-byte signature) or a zip whose first MiB holds our format name
    ``mae-affect-features``, or a directory whose root ``zarr.json`` holds it. Every store of ours
    writes that name at creation, at the start of the file; another tool's HDF5 file, zip or Zarr
    directory does not carry it, so it is never taken for ours.
    """
    path = Path(path)
    marker = FORMAT_NAME.encode()
    try:
        if path.is_dir():
            return marker in (path / "zarr.json").read_bytes()
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        return False
    return head.startswith((HDF5_SIGNATURE, ZIP_SIGNATURE)) and marker in head


def h5_encode_attrs(attrs: dict) -> dict:
    """HDF5 attributes: ``attrs_json`` (authoritative) plus a native mirror of each attribute
    (scalars as they are, flat numeric lists as arrays, anything else as JSON text)."""
    out = {H5_ATTRS_JSON: json.dumps(attrs)}
    for k, v in attrs.items():
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
        if isinstance(v, (str, bool)) or (numeric and math.isfinite(v) and abs(v) < 2**63):
            out[k] = v
        elif isinstance(v, list) and v and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v
        ):
            out[k] = np.asarray(
                v, dtype=np.float64 if any(isinstance(x, float) for x in v) else np.int64)
        else:
            out[k] = json.dumps(v)
    return out


def h5_mirror_differences(raw, attrs: dict) -> list[str]:
    """Keys whose native HDF5 attribute in ``raw`` holds another value than the mirror
    :func:`h5_encode_attrs` writes for ``attrs`` (the ``attrs_json`` copy), sorted; a missing
    mirror is no difference (a reader gets no value, not a wrong one)."""
    def plain(value):
        return np.asarray(value.decode() if isinstance(value, bytes) else value).tolist()

    return sorted(k for k, v in h5_encode_attrs(attrs).items()
                  if k != H5_ATTRS_JSON and k in raw and plain(raw[k]) != plain(v))


def h5_decode_attrs(raw, path: Path) -> dict:
    if H5_ATTRS_JSON not in raw:
        raise StoreError(f"{path} is an HDF5 file without the {H5_ATTRS_JSON!r} root attribute, "
                         "not a mae-affect feature store: check the path")
    text = raw[H5_ATTRS_JSON]
    try:
        return json.loads(text.decode() if isinstance(text, bytes) else text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: root attribute {H5_ATTRS_JSON!r} is not valid JSON ({e}); "
                         "the file is damaged: extract again with --overwrite") from e
