"""CIFAR-10 / CIFAR-100 input generators (TFDS). Interface stub: the full
pipeline (augmentation, offline-prepared data, errors) is the Tasks issue."""
from gpipe_lingvo import base_input_generator

NUM_CLASSES = {'cifar10': 10, 'cifar100': 100}


class CifarInput(base_input_generator.BaseInputGenerator):
  """CIFAR images from tensorflow_datasets."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('dataset', 'cifar10', 'cifar10 or cifar100.')
    p.Define('split', 'train', 'TFDS split: train or test.')
    p.Define('data_dir', None, 'TFDS data_dir (None: TFDS default).')
    p.Define('image_size', 32, 'Output size (upscaled if > 32).')
    return p

  def __init__(self, params):
    super().__init__(params)
    if self.params.dataset not in NUM_CLASSES:
      raise ValueError(f'dataset must be one of {sorted(NUM_CLASSES)}, got '
                       f'{self.params.dataset!r}.')

  def ImageShape(self):
    return [self.params.image_size, self.params.image_size, 3]

  @property
  def num_classes(self):
    return NUM_CLASSES[self.params.dataset]


def InputParams(dataset, split, batch_size, image_size=32, **kw):
  """Params of `dataset`'s `split` (training behaviour iff split == train)."""
  return CifarInput.Params().Set(
      name=split, dataset=dataset, split=split, batch_size=batch_size,
      image_size=image_size, is_training=(split == 'train'), **kw)
