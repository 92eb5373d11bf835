"""faceseg: face parsing (11-class U-Net) trained, tuned and served on Ray."""
import os

# Keras 3, TensorFlow's default, fails under MultiWorkerMirroredStrategy; tf-keras does not.
# This must happen before TensorFlow is first imported anywhere in the process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
