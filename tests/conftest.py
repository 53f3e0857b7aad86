"""Shared test set-up: 8 logical CPU devices, so pipelines with K<=8 run
(the paper's largest configs use 8 stages)."""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# As trainer.py: allocator statistics on every CPU (trainer_lib.StepPeak).
os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpipe_lingvo import devices  # pylint: disable=wrong-import-position

# Must happen before any test touches TensorFlow devices.
devices.EnsureDevices('cpu', 8)
