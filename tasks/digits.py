"""The embedded default task: scikit-learn's bundled handwritten digits.

1797 real 8x8 grayscale scans (UCI optical digits), 10 classes, shipped
inside scikit-learn, so the demo needs no network. The train/test split is
fixed (stratified, seed 0, 360 test images).
"""
import numpy as np
import tensorflow as tf

from gpipe_lingvo import base_input_generator

NUM_CLASSES = 10
NUM_TEST = 360


def LoadSplit(split):
  """Returns (images [N, 8, 8, 1] float32 in 0..16, labels [N] int32)."""
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  from sklearn import model_selection  # pylint: disable=import-outside-toplevel
  d = datasets.load_digits()
  x = d.images.astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  x_tr, x_te, y_tr, y_te = model_selection.train_test_split(
      x, y, test_size=NUM_TEST, random_state=0, stratify=y)
  if split == 'train':
    return x_tr, y_tr
  if split == 'test':
    return x_te, y_te
  raise ValueError(f'digits has splits train and test, not {split!r}.')


class DigitsInput(base_input_generator.BaseInputGenerator):
  """Digits images normalised to zero mean / unit variance."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('split', 'train', 'train or test.')
    return p

  def __init__(self, params):
    super().__init__(params)
    self._x, self._y = LoadSplit(self.params.split)
    train_x = self._x if self.params.split == 'train' else LoadSplit('train')[0]
    # Normalise with the training split's pixel statistics.
    self._mean, self._std = float(train_x.mean()), float(train_x.std())

  def ImageShape(self):
    return [8, 8, 1]

  @property
  def num_classes(self):
    return NUM_CLASSES

  @property
  def num_examples(self):
    return int(np.ceil(len(self._y) / self.params.num_shards))

  def _Examples(self):
    return tf.data.Dataset.from_tensor_slices((self._x, self._y))

  def _Preprocess(self, image, label, seed):
    del seed  # no augmentation
    return (image - self._mean) / self._std, label


def TrainParams(batch_size=64):
  return DigitsInput.Params().Set(name='train', split='train',
                                  batch_size=batch_size, is_training=True)


def TestParams(batch_size=120):
  return DigitsInput.Params().Set(name='test', split='test',
                                  batch_size=batch_size, is_training=False)
