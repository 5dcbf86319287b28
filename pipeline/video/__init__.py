"""Raw videos in: decoding, face detection, alignment and tracking, the ``faces`` stage that writes
the Aff-Wild2 layout, and ``analyze``, which runs a trained encoder and heads over new footage.

The decoder (PyAV) and the detector (facenet-pytorch's MTCNN) are the optional ``video`` extra
(``pip install -e '.[video]'``): they are imported inside the functions that use them, through
:func:`require`, so that the rest of the tool imports without them.
"""

import importlib
from types import ModuleType

from pipeline.errors import InputError

# import name -> the distribution that provides it
EXTRA_PACKAGES = {"av": "av", "facenet_pytorch": "facenet-pytorch"}


def require(module: str) -> ModuleType:
    """Import a package of the ``video`` extra, or raise InputError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = EXTRA_PACKAGES.get(module, module)
        raise InputError(
            f"the video front end needs the package {package!r} ({err}); install it with "
            "pip install -e '.[video]'"
        ) from None
