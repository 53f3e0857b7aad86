"""Shared test set-up: 4 logical CPU devices, so pipelines with K<=4 run."""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpipe_lingvo import devices  # pylint: disable=wrong-import-position

# Must happen before any test touches TensorFlow devices.
devices.EnsureDevices('cpu', 4)
