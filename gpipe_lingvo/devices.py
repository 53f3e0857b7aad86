"""Device topology: which device each pipeline stage runs on.

On a CPU-only machine, K stages need K logical CPU devices; TensorFlow can
only create them before it initialises its devices, so the trainer calls
ConfigureFromParams() first thing. On GPUs each stage takes
`devices_per_stage` physical (or logical, memory-limited) GPUs.
"""
import tensorflow as tf

from gpipe_lingvo import errors
from gpipe_lingvo import hyperparams

DEVICE_TYPES = ('cpu', 'gpu')


class DeviceError(errors.UserError, ValueError):
  """The topology asks for devices that do not exist or cannot be made."""


def TopologyParams():
  p = hyperparams.Params()
  p.Define('device_type', 'cpu', f'One of {DEVICE_TYPES}.')
  p.Define('devices_per_stage', 1, 'Devices each stage uses.')
  p.Define('num_logical_devices', 0,
           'CPU: logical devices to create (0: as many as the stages need).')
  p.Define('gpu_memory_limit_mb', 0,
           'GPU: if > 0, split each physical GPU into logical GPUs of this '
           'size (emulates several small devices on one card).')
  p.Define('intra_op_threads', 0,
           'Threads per op (0: TensorFlow default). 1 lets stages overlap on '
           'a small CPU.')
  return p




def EnsureDevices(device_type, count, gpu_memory_limit_mb=0,
                  intra_op_threads=0):
  """Makes at least `count` logical devices of `device_type` available.

  Raises DeviceError naming the numbers if it cannot (e.g. TensorFlow was
  already initialised with fewer, or there are fewer physical GPUs).
  """
  if device_type not in DEVICE_TYPES:
    raise DeviceError(f'topology.device_type must be one of {DEVICE_TYPES}, '
                      f'got {device_type!r}.')
  if intra_op_threads:
    try:
      tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    except RuntimeError:
      if tf.config.threading.get_intra_op_parallelism_threads() != intra_op_threads:
        raise DeviceError(
            f'intra_op_threads={intra_op_threads} must be set before '
            'TensorFlow initialises; set it first in the process.') from None
  physical = tf.config.list_physical_devices(device_type.upper())
  if not physical:
    raise DeviceError(f'No {device_type.upper()} devices on this machine; '
                      "use topology.device_type = 'cpu'.")
  # list_logical_devices() would initialise TensorFlow's devices, after
  # which they can no longer be split: configure first, count afterwards.
  try:
    if device_type == 'cpu':
      current = tf.config.get_logical_device_configuration(physical[0])
      if not current or len(current) < count:
        tf.config.set_logical_device_configuration(
            physical[0], [tf.config.LogicalDeviceConfiguration()] * count)
    elif len(physical) < count:
      if not gpu_memory_limit_mb:
        raise DeviceError(
            f'The pipeline needs {count} GPUs but {len(physical)} exist; add '
            'GPUs, lower num_stages, or set topology.gpu_memory_limit_mb to '
            'split each GPU into logical ones.')
      per = -(-count // len(physical))
      for dev in physical:
        tf.config.set_logical_device_configuration(
            dev, [tf.config.LogicalDeviceConfiguration(
                memory_limit=gpu_memory_limit_mb)] * per)
  except RuntimeError:
    pass  # Already initialised: fine if there are enough devices (below).
  have = len(tf.config.list_logical_devices(device_type.upper()))
  if have < count:
    raise DeviceError(
        f'The pipeline needs {count} logical {device_type.upper()} devices '
        f'but TensorFlow is already initialised with {have}. Configure '
        'devices before any TensorFlow op runs (trainer.py does this; in '
        'your own script call gpipe_lingvo.devices.EnsureDevices first).')


def StageDevices(topology, num_stages):
  """Device name of each stage's first device."""
  kind = topology.device_type.upper()
  n = topology.devices_per_stage
  return [f'/device:{kind}:{k * n}' for k in range(num_stages)]


def _FindTopologies(params, out):
  for key, value in params.IterParams():
    if isinstance(value, hyperparams.Params):
      if key == 'topology' and 'device_type' in dict(value.IterParams()):
        out.append((params, value))
      else:
        _FindTopologies(value, out)
    elif isinstance(value, (list, tuple)):
      for v in value:
        if isinstance(v, hyperparams.Params):
          _FindTopologies(v, out)
  return out


def ConfigureFromParams(task_params):
  """Creates the devices every pipelined layer in task_params needs."""
  for owner, topo in _FindTopologies(task_params, []):
    stages = dict(owner.IterParams()).get('num_stages', 1) or 1
    need = stages * topo.devices_per_stage
    if topo.device_type == 'cpu' and topo.num_logical_devices:
      need = max(need, topo.num_logical_devices)
    EnsureDevices(topo.device_type, need, topo.gpu_memory_limit_mb,
                  topo.intra_op_threads)
