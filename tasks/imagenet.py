"""ImageNet input generator (TFDS `imagenet2012`, prepared from the
manually downloaded archives; see tfds_data.PrepareCommand).

Training: Inception-style random-resized crop (a random box covering
`area_range` of the image with aspect ratio in `aspect_ratio_range`, decoded
directly from the JPEG), resized to `image_size` (224, 331, 480, ...), and a
horizontal flip. Evaluation: a centre crop of `eval_crop_fraction` of the
shorter side, resized to `image_size`. Both normalise per channel.

Examples stay JPEG-encoded until _Preprocess, so `cache` (off by default:
ImageNet is ~150 GB) would cache encoded bytes, and only the crop window is
decoded.
"""
import tensorflow as tf

from tasks import tfds_input

NUM_CLASSES = 1000
SPLITS = ('train', 'validation')
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ImageNetInput(tfds_input.TfdsInput):
  """ImageNet images from tensorflow_datasets (manually prepared)."""

  TFDS_NAME = 'imagenet2012'

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('split', 'train', 'TFDS split: train or validation.')
    p.Define('image_size', 224, 'Output image size.')
    tfds_input.DefineTfdsParams(p)
    p.Define('area_range', (0.08, 1.0),
             'Training crop: fraction of the image area covered.')
    p.Define('aspect_ratio_range', (3. / 4., 4. / 3.),
             'Training crop: width/height ratio range.')
    p.Define('min_object_covered', 0.1,
             'Training crop: minimum fraction of the whole-image box kept.')
    p.Define('crop_attempts', 10,
             'Training crop: tries before falling back to the whole image.')
    p.Define('eval_crop_fraction', 0.875,
             'Evaluation: centre crop side / shorter image side.')
    p.cache = False
    return p

  def __init__(self, params):
    super().__init__(params)
    p = self.params
    tfds_input.CheckCommonParams(p, SPLITS)
    lo, hi = p.area_range
    if not 0 < lo <= hi <= 1:
      raise ValueError(f'{p.name}: area_range must satisfy 0 < lo <= hi <= 1, '
                       f'got {p.area_range!r}.')
    lo, hi = p.aspect_ratio_range
    if not 0 < lo <= hi:
      raise ValueError(f'{p.name}: aspect_ratio_range must satisfy '
                       f'0 < lo <= hi, got {p.aspect_ratio_range!r}.')
    if not 0 < p.eval_crop_fraction <= 1:
      raise ValueError(f'{p.name}: eval_crop_fraction must be in (0, 1], got '
                       f'{p.eval_crop_fraction}.')
    if p.crop_attempts < 1:
      raise ValueError(f'{p.name}: crop_attempts must be >= 1.')

  def ImageShape(self):
    return [self.params.image_size, self.params.image_size, 3]

  @property
  def num_classes(self):
    return NUM_CLASSES

  def _Examples(self):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    return self._AsDataset(decoders={'image': tfds.decode.SkipDecoding()})

  def _CropWindow(self, jpeg, seed):
    """[y, x, h, w] of the crop to decode."""
    p = self.params
    shape = tf.image.extract_jpeg_shape(jpeg)
    if p.is_training:
      begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
          shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
          seed=seed, min_object_covered=p.min_object_covered,
          aspect_ratio_range=p.aspect_ratio_range, area_range=p.area_range,
          max_attempts=p.crop_attempts, use_image_if_no_bounding_boxes=True)
      return tf.stack([begin[0], begin[1], size[0], size[1]])
    h, w = shape[0], shape[1]
    side = tf.cast(p.eval_crop_fraction * tf.cast(tf.minimum(h, w), tf.float32),
                   tf.int32)
    side = tf.maximum(side, 1)
    return tf.stack([(h - side + 1) // 2, (w - side + 1) // 2, side, side])

  def _Preprocess(self, image, label, seed):
    p = self.params
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
    window = self._CropWindow(image, crop_seed)
    image = tf.image.decode_and_crop_jpeg(image, window, channels=3)
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = self._Resize(image, p.image_size)
    if p.is_training and p.random_flip:
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = self._Normalize(image, MEAN, STD)
    image = tf.ensure_shape(image, self.ImageShape())
    return image, label


def InputParams(split, batch_size, image_size=224, **kw):
  """Params of `split` (training behaviour iff split == train)."""
  return ImageNetInput.Params().Set(
      name=split, split=split, batch_size=batch_size, image_size=image_size,
      is_training=(split == 'train'), **kw)
