"""Small archives in the ORIGINAL download formats of CIFAR and ImageNet.

No network here, so tests and the input bench feed the real TFDS builders
with archives laid out exactly as the real downloads are (the CIFAR binary
tarballs; ImageNet's ILSVRC2012_img_train.tar of per-synset tars and
ILSVRC2012_img_val.tar). The images are generated: each class has its own
colour and stripe pattern plus noise, so a small model can learn them, but
they are test records, not the real datasets.
"""
import io
import os
import tarfile

import numpy as np

CIFAR10_LABEL_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                       'frog', 'horse', 'ship', 'truck')

# Archive layout of the real downloads (what tfds' cifar builder expects).
CIFAR_ARCHIVES = {
    'cifar10': {
        'archive': 'cifar-10-binary.tar.gz',
        'prefix': 'cifar-10-batches-bin',
        'train_files': [f'data_batch_{i}.bin' for i in range(1, 6)],
        'test_files': ['test_batch.bin'],
    },
    'cifar100': {
        'archive': 'cifar-100-binary.tar.gz',
        'prefix': 'cifar-100-binary',
        'train_files': ['train.bin'],
        'test_files': ['test.bin'],
    },
}
IMAGENET_TRAIN_ARCHIVE = 'ILSVRC2012_img_train.tar'
IMAGENET_VAL_ARCHIVE = 'ILSVRC2012_img_val.tar'


def ClassImages(labels, height, width, rng):
  """uint8 [N, H, W, 3] images whose colour and stripes depend on the label."""
  n = len(labels)
  labels = np.asarray(labels)
  hue = (labels * 0.6180339887) % 1.0  # well-spread colours per class
  base = np.stack([np.abs(np.sin(np.pi * (hue + k / 3.0))) for k in range(3)],
                  axis=-1)  # [N, 3] in 0..1
  period = 2 + labels % 7
  rows = np.arange(height)[None, :, None]
  stripes = ((rows // period[:, None, None]) % 2).astype(np.float32)  # [N, H, 1]
  img = 0.25 + 0.5 * base[:, None, None, :] * (0.6 + 0.4 * stripes[..., None])
  img = np.broadcast_to(img, (n, height, width, 3)).copy()
  img += rng.normal(0.0, 0.08, size=img.shape)
  return (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def _CifarRecords(fine, coarse, images):
  """Original CIFAR binary records: label byte(s), then R, G, B planes."""
  out = bytearray()
  for i in range(len(fine)):
    if coarse is not None:
      out.append(int(coarse[i]))
    out.append(int(fine[i]))
    out += images[i].transpose(2, 0, 1).tobytes()  # HWC -> CHW planes
  return bytes(out)


def _AddBytes(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  info.mtime = 0
  tar.addfile(info, io.BytesIO(data))


def WriteCifarArchive(dataset, directory, num_train=50, num_test=20, seed=0):
  """Writes `dataset`'s download tarball with the given numbers of records.

  Returns (archive path, {'train': labels, 'test': labels}, {'train': images,
  'test': images}) so tests can compare what comes back out of TFDS.
  """
  if dataset not in CIFAR_ARCHIVES:
    raise ValueError(f'dataset must be one of {sorted(CIFAR_ARCHIVES)}, got '
                     f'{dataset!r}.')
  spec = CIFAR_ARCHIVES[dataset]
  num_classes = 10 if dataset == 'cifar10' else 100
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, spec['archive'])
  labels, images = {}, {}
  with tarfile.open(path, 'w:gz') as tar:
    for split, count, files in (('train', num_train, spec['train_files']),
                                ('test', num_test, spec['test_files'])):
      fine = np.arange(count) % num_classes  # every class present
      rng.shuffle(fine)
      imgs = ClassImages(fine, 32, 32, rng)
      coarse = fine // 5 if dataset == 'cifar100' else None
      labels[split], images[split] = fine.astype(np.int64), imgs
      # Spread the records over the split's files like the real batches.
      bounds = np.linspace(0, count, len(files) + 1).astype(int)
      for f, lo, hi in zip(files, bounds[:-1], bounds[1:]):
        data = _CifarRecords(fine[lo:hi], None if coarse is None else
                             coarse[lo:hi], imgs[lo:hi])
        _AddBytes(tar, f'{spec["prefix"]}/{f}', data)
    if dataset == 'cifar10':
      _AddBytes(tar, f'{spec["prefix"]}/batches.meta.txt',
                ('\n'.join(CIFAR10_LABEL_NAMES) + '\n\n').encode())
    else:
      _AddBytes(tar, f'{spec["prefix"]}/coarse_label_names.txt',
                ''.join(f'coarse_{i}\n' for i in range(20)).encode())
      _AddBytes(tar, f'{spec["prefix"]}/fine_label_names.txt',
                ''.join(f'fine_{i}\n' for i in range(100)).encode())
  return path, labels, images


def _Jpeg(image):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.io.encode_jpeg(image, quality=90).numpy()


def WriteImageNetArchives(manual_dir, synsets, images_per_class=4, num_val=8,
                          size=(72, 96), seed=0):
  """Writes ILSVRC2012_img_{train,val}.tar as downloaded from image-net.org.

  The train tar holds one `<synset>.tar` per class with `<synset>_<i>.JPEG`
  images; the val tar holds ILSVRC2012_val_%08d.JPEG, whose labels TFDS takes
  from its bundled validation label list (so val images get real labels
  whatever they show). Image sizes vary around `size` (H, W) so crops and
  resizes are exercised. Returns {'train': n, 'validation': n}.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(manual_dir, exist_ok=True)

  def RandomSize():
    return (int(size[0] + rng.integers(-8, 9)), int(size[1] + rng.integers(-8, 9)))

  with tarfile.open(os.path.join(manual_dir, IMAGENET_TRAIN_ARCHIVE), 'w') as tar:
    for c, synset in enumerate(synsets):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as sub:
        for i in range(images_per_class):
          h, w = RandomSize()
          img = ClassImages([c], h, w, rng)[0]
          _AddBytes(sub, f'{synset}_{i}.JPEG', _Jpeg(img))
      _AddBytes(tar, f'{synset}.tar', inner.getvalue())
  with tarfile.open(os.path.join(manual_dir, IMAGENET_VAL_ARCHIVE), 'w') as tar:
    for i in range(1, num_val + 1):
      h, w = RandomSize()
      img = ClassImages([i], h, w, rng)[0]
      _AddBytes(tar, f'ILSVRC2012_val_{i:08d}.JPEG', _Jpeg(img))
  return {'train': len(synsets) * images_per_class, 'validation': num_val}
