"""CIFAR-10 / CIFAR-100 input generators (TFDS `cifar10`, `cifar100`).

Training: pad-and-random-crop and horizontal flip at 32x32, then upscaling
to `image_size` (the paper fine-tunes at 480x480), per-channel
normalisation and optional cutout (the paper fine-tunes with flip and
cutout). Evaluation: upscaling and normalisation only.

Data is read lazily in GetDataset(); a missing dataset raises
tfds_data.MissingDataError naming the data_dir and the preparation command.
"""
import tensorflow as tf

from tasks import tfds_input

NUM_CLASSES = {'cifar10': 10, 'cifar100': 100}
SPLITS = ('train', 'test')
# Per-channel pixel statistics (RGB, pixels scaled to [0, 1]) of the
# training splits, the usual values for these datasets.
MEAN = {'cifar10': (0.4914, 0.4822, 0.4465),
        'cifar100': (0.5071, 0.4865, 0.4409)}
STD = {'cifar10': (0.2470, 0.2435, 0.2616),
       'cifar100': (0.2673, 0.2564, 0.2762)}
class CifarInput(tfds_input.TfdsInput):
  """CIFAR images from tensorflow_datasets."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('dataset', 'cifar10', 'cifar10 or cifar100.')
    p.Define('split', 'train', 'TFDS split: train or test (slices such as '
             '"train[:45000]" work too).')
    p.Define('image_size', 32, 'Output size (upscaled if > 32).')
    tfds_input.DefineTfdsParams(p)
    p.Define('pad_crop', 4, 'Training: zero-pad by this many pixels and crop '
             'back to 32x32 at a random offset (0: off).')
    p.Define('cutout_size', 0, 'Training: side of the square (in output '
             'pixels) set to zero after normalisation, at a random centre '
             '(0: off; 16 is the usual at 32x32).')
    # The iterator's state would hold the memory cache of the whole split in
    # every checkpoint (193 MB for CIFAR-10), while skipping 10 epochs takes
    # 5 s (bench/resume_bench.py).
    p.resume_by = 'skip'
    return p

  def __init__(self, params):
    super().__init__(params)
    p = self.params
    if p.dataset not in NUM_CLASSES:
      raise ValueError(f'dataset must be one of {sorted(NUM_CLASSES)}, got '
                       f'{p.dataset!r}.')
    tfds_input.CheckCommonParams(p, SPLITS)
    if p.pad_crop < 0:
      raise ValueError(f'{p.name}: pad_crop must be >= 0, got {p.pad_crop}.')
    if not 0 <= p.cutout_size <= p.image_size:
      raise ValueError(f'{p.name}: cutout_size must be in [0, image_size='
                       f'{p.image_size}], got {p.cutout_size}.')

  def _TfdsName(self):
    return self.params.dataset

  def ImageShape(self):
    return [self.params.image_size, self.params.image_size, 3]

  @property
  def num_classes(self):
    return NUM_CLASSES[self.params.dataset]

  def _Examples(self):
    return self._AsDataset()

  def _Preprocess(self, image, label, seed):
    p = self.params
    crop_seed, flip_seed, cutout_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    image = tf.image.convert_image_dtype(image, tf.float32)  # uint8 -> [0, 1]
    if p.is_training and p.pad_crop:
      image = tf.pad(image, [[p.pad_crop] * 2, [p.pad_crop] * 2, [0, 0]])
      image = tf.image.stateless_random_crop(image, [32, 32, 3], crop_seed)
    if p.is_training and p.random_flip:
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if p.image_size != 32:
      image = self._Resize(image, p.image_size)
    image = self._Normalize(image, MEAN[p.dataset], STD[p.dataset])
    if p.is_training and p.cutout_size:
      image = Cutout(image, p.cutout_size, cutout_seed)
    image = tf.ensure_shape(image, self.ImageShape())
    return image, label


def Cutout(image, size, seed):
  """Zeroes a size x size square centred at a uniformly random pixel (the
  square may extend past the border, as in DeVries & Taylor 2017)."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  cy = tf.random.stateless_uniform([], seed, 0, h, dtype=tf.int32)
  cx = tf.random.stateless_uniform(
      [], seed + tf.constant([0, 1], seed.dtype), 0, w, dtype=tf.int32)
  ys = tf.range(h)[:, None]
  xs = tf.range(w)[None, :]
  half = size // 2
  inside = ((ys >= cy - half) & (ys < cy - half + size) &
            (xs >= cx - half) & (xs < cx - half + size))
  return image * tf.cast(~inside, image.dtype)[:, :, None]


def InputParams(dataset, split, batch_size, image_size=32, **kw):
  """Params of `dataset`'s `split` (training behaviour iff split == train)."""
  return CifarInput.Params().Set(
      name=split, dataset=dataset, split=split, batch_size=batch_size,
      image_size=image_size, is_training=(split == 'train'), **kw)
