"""gpipe_lingvo: a Lingvo-style TensorFlow 2 framework with GPipe pipelining."""
import os as _os

# Quieten TensorFlow's C++ start-up banner unless the user asked otherwise.
_os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
