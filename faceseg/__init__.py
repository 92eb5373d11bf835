"""faceseg: face parsing (a U-Net over any class taxonomy) trained, tuned, served and exported on Ray.

The Python API is in `faceseg.api`; `faceseg.FaceParser` parses single images.
"""
import os

# Keras 3, TensorFlow's default, fails under MultiWorkerMirroredStrategy; tf-keras does not.
# This must happen before TensorFlow is first imported anywhere in the process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# The console is faceseg's own lines; FACESEG_VERBOSE=1 (or --verbose) shows every library's (faceseg/logs.py).
from faceseg import logs  # noqa: E402

for _name, _value in logs.quiet_env().items():
    if _name != "PYTHONWARNINGS":          # read at interpreter start: for Ray's worker processes only
        os.environ.setdefault(_name, _value)
logs.quiet_imports()
# TensorFlow's own pooling allocator for CPU tensors: with plain malloc every fresh multi-MiB batch or
# activation is page-faulted in again (benchmarks/results/design.md). Read at the first allocation.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
# OpenCV reads this once, when it loads: no image header may make it allocate more than this.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(100_000_000))

__version__ = "0.2.0"


def __getattr__(name: str):
    if name == "FaceParser":      # imported on first use: `import faceseg` stays free of TensorFlow
        from faceseg.predict.parser import FaceParser

        return FaceParser
    raise AttributeError(f"module 'faceseg' has no attribute {name!r}")
