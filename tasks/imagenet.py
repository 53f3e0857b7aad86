"""ImageNet (TFDS imagenet2012) input generator. Interface stub: the full
pipeline is the Tasks issue."""
from gpipe_lingvo import base_input_generator

NUM_CLASSES = 1000


class ImageNetInput(base_input_generator.BaseInputGenerator):
  """ImageNet images from tensorflow_datasets (manually prepared)."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('split', 'train', 'TFDS split: train or validation.')
    p.Define('data_dir', None, 'TFDS data_dir (None: TFDS default).')
    p.Define('image_size', 224, 'Output image size.')
    return p

  def ImageShape(self):
    return [self.params.image_size, self.params.image_size, 3]

  @property
  def num_classes(self):
    return NUM_CLASSES


def InputParams(split, batch_size, image_size=224, **kw):
  """Params of `split` (training behaviour iff split == train)."""
  return ImageNetInput.Params().Set(
      name=split, split=split, batch_size=batch_size, image_size=image_size,
      is_training=(split == 'train'), **kw)
