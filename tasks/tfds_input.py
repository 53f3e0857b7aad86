"""Shared base of the TFDS-backed inputs (CIFAR, ImageNet): lazy builder
(no data is read at instantiation), the host shard as a TFDS sub-split,
common params and their validation, normalisation and resizing."""
import tensorflow as tf

from gpipe_lingvo import base_input_generator
from tasks import tfds_data

_DTYPES = (tf.float32, tf.bfloat16)
_RESIZE_METHODS = ('bilinear', 'bicubic', 'nearest', 'area')


def _CheckTriple(name, v, positive=False):
  if v is None:
    return
  if len(v) != 3 or (positive and min(v) <= 0):
    raise ValueError(f'{name} must be 3 per-channel values'
                     f'{" > 0" if positive else ""}, got {v!r}.')


def CheckCommonParams(p, splits):
  """Validation shared with the ImageNet input (errors at Instantiate)."""
  if p.split.split('[', 1)[0] not in splits:
    raise ValueError(f'{p.name}: split must be one of {splits} (optionally '
                     f'with a TFDS slice like "train[:90%]"), got {p.split!r}.')
  if p.image_size <= 0:
    raise ValueError(f'{p.name}: image_size must be > 0, got {p.image_size}.')
  try:
    dtype = tf.as_dtype(p.dtype)
  except TypeError:
    dtype = None
  if dtype not in _DTYPES:
    raise ValueError(f'{p.name}: dtype must be float32 or bfloat16, got '
                     f'{p.dtype!r}.')
  if p.resize_method not in _RESIZE_METHODS:
    raise ValueError(f'{p.name}: resize_method must be one of '
                     f'{_RESIZE_METHODS}, got {p.resize_method!r}.')
  if p.parallel_reads < -1 or p.parallel_reads == 0:
    raise ValueError(f'{p.name}: parallel_reads must be >= 1 or -1 (AUTOTUNE), '
                     f'got {p.parallel_reads}.')
  _CheckTriple(f'{p.name}: mean', p.mean)
  _CheckTriple(f'{p.name}: std', p.std, positive=True)


def DefineTfdsParams(p):
  """Params shared by the TFDS-backed inputs."""
  p.Define('data_dir', None, 'TFDS data_dir (None: TFDS default).')
  p.Define('download', True,
           'If the dataset is not prepared in data_dir, let TFDS download and '
           'prepare it on first use (CIFAR; ImageNet needs manual archives).')
  p.Define('parallel_reads', -1,
           'Files read in parallel (TFDS interleave); -1 = AUTOTUNE.')
  p.Define('normalize', True,
           'Subtract the per-channel mean and divide by the std.')
  p.Define('mean', None, 'Per-channel mean (RGB, [0, 1] pixels); None: the '
           'dataset\'s.')
  p.Define('std', None, 'Per-channel std; None: the dataset\'s.')
  p.Define('random_flip', True, 'Random horizontal flip (training).')
  p.Define('resize_method', 'bilinear', f'One of {_RESIZE_METHODS}.')


class TfdsInput(base_input_generator.BaseInputGenerator):
  """Shared TFDS reading: lazy builder, host shard as a TFDS sub-split."""

  SHARDS_IN_EXAMPLES = True
  TFDS_NAME = None

  def __init__(self, params):
    super().__init__(params)
    self._builder = None

  def _TfdsName(self):
    return self.TFDS_NAME

  def _Builder(self):
    if self._builder is None:
      self._builder = tfds_data.LoadBuilder(
          self._TfdsName(), self.params.data_dir, self.params.split,
          download=self.params.download)
    return self._builder

  def _ShardSplit(self):
    p = self.params
    return tfds_data.SplitForShard(p.split, p.shard_index, p.num_shards)

  def CheckData(self):
    self._Builder()

  @property
  def num_examples(self):
    return int(self._Builder().info.splits[self._ShardSplit()].num_examples)

  def _AsDataset(self, **kw):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    p = self.params
    reads = p.parallel_reads
    read_config = tfds.ReadConfig(
        shuffle_seed=p.seed,
        interleave_cycle_length=(tf.data.AUTOTUNE if reads == -1 else reads),
        try_autocache=False)  # caching is the base class's `cache` param
    return self._Builder().as_dataset(
        split=self._ShardSplit(), shuffle_files=p.is_training,
        read_config=read_config, as_supervised=True, **kw)

  def _Normalize(self, image, default_mean, default_std):
    """image: float32 in [0, 1]."""
    p = self.params
    if not p.normalize:
      return image
    mean = tf.constant(p.mean or default_mean, tf.float32)
    std = tf.constant(p.std or default_std, tf.float32)
    return (image - mean) / std

  def _Resize(self, image, size):
    return tf.image.resize(image, [size, size], method=self.params.resize_method)
