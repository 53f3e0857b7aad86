"""Input-rate bench: examples/second of the CIFAR and ImageNet input
generators alone, against the training rate of a small model.

    python bench/input_bench.py [--quick]

The data are GENERATED TEST RECORDS, not the real datasets: archives in the
original download formats (tasks/synthetic_archives.py) are prepared by the
real TFDS builders into a temporary directory (removed at exit). CIFAR
records are 32x32 like the real ones; the ImageNet JPEGs are 375x500, about
the real average size, but compress differently from photos, so decoding
costs are indicative only.
"""
import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top

from params import cifar10 as cifar10_params  # pylint: disable=g-import-not-at-top
from tasks import cifar  # pylint: disable=g-import-not-at-top
from tasks import imagenet  # pylint: disable=g-import-not-at-top
from tasks import synthetic_archives  # pylint: disable=g-import-not-at-top
from tasks import tfds_data  # pylint: disable=g-import-not-at-top


def InputRate(gen, batches, warmup):
  """Real (weight > 0) examples/s of iterating gen's dataset, timed after
  `warmup` batches; an evaluation split is read again until `batches`."""
  n, examples, t0 = 0, 0.0, None
  while n < batches:
    for i, b in enumerate(gen.GetDataset()):
      if i == warmup and t0 is None:
        t0 = time.perf_counter()
      elif t0 is not None:
        n += 1
        examples += float(tf.reduce_sum(b['weight']))
        if n >= batches:
          break
  return examples / (time.perf_counter() - t0)


def ModelRate(num_classes, image_size, batch_size, steps, warmup=3):
  """Examples/s of the small convnet's train step on a fixed batch."""
  p = cifar10_params.SmallConvNetTask(num_classes)
  task = p.Instantiate()
  task.BuildOptimizer()
  step = tf.Variable(0, dtype=tf.int64)
  batch = {'image': tf.random.normal([batch_size, image_size, image_size, 3]),
           'label': tf.zeros([batch_size], tf.int32),
           'weight': tf.ones([batch_size])}

  @tf.function
  def Step():
    out = task.TrainStep(batch, step)
    step.assign_add(1)
    return out[0]['total_loss']

  for _ in range(warmup):
    Step().numpy()
  t0 = time.perf_counter()
  for _ in range(steps):
    Step().numpy()
  return steps * batch_size / (time.perf_counter() - t0)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--quick', action='store_true', help='fewer batches')
  args = ap.parse_args()
  scale = 0.3 if args.quick else 1.0
  root = tempfile.mkdtemp(prefix='input_bench_')
  try:
    t = time.perf_counter()
    archive, _, _ = synthetic_archives.WriteCifarArchive(
        'cifar10', os.path.join(root, 'archive'), num_train=5000,
        num_test=1000)
    c10 = os.path.join(root, 'cifar')
    tfds_data.PrepareCifarFromArchive('cifar10', c10, archive,
                                      trust_archive=True)
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    synsets = open(str(tfds.core.tfds_path(
        'datasets/imagenet2012/labels.txt'))).read().split()[:10]
    synthetic_archives.WriteImageNetArchives(
        os.path.join(root, 'manual'), synsets, images_per_class=30,
        num_val=200, size=(375, 500))
    inet = os.path.join(root, 'imagenet')
    tfds_data.PrepareImageNetFromManualDir(inet, os.path.join(root, 'manual'))
    prep_s = time.perf_counter() - t

    nb = lambda n: max(5, int(n * scale))  # pylint: disable=unnecessary-lambda-assignment
    rows = []
    cases = [
        ('cifar10 train 32x32 (crop+flip+cutout)',
         cifar.InputParams('cifar10', 'train', 128, data_dir=c10,
                           cutout_size=16), nb(60), (10, 32, 128)),
        ('cifar10 test 32x32',
         cifar.InputParams('cifar10', 'test', 128, data_dir=c10), nb(60),
         (10, 32, 128)),
        ('cifar10 train upscaled 224x224',
         cifar.InputParams('cifar10', 'train', 32, data_dir=c10,
                           image_size=224), nb(30), (10, 224, 32)),
        ('imagenet train 224x224 (random-resized crop+flip)',
         imagenet.InputParams('train', 32, data_dir=inet), nb(30),
         (1000, 224, 32)),
        ('imagenet validation 224x224 (centre crop)',
         imagenet.InputParams('validation', 32, data_dir=inet), nb(30),
         (1000, 224, 32)),
    ]
    model_rates = {}
    for name, params, batches, model in cases:
      gen = params.Instantiate()
      rate = InputRate(gen, batches, warmup=3)
      if model not in model_rates:
        model_rates[model] = ModelRate(*model, steps=nb(20) if model[1] == 32
                                       else nb(5))
      rows.append((name, rate, model, model_rates[model]))

    print(f'# input bench  {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}'
          f'  {platform.node()}  {os.cpu_count()} CPUs  TF {tf.__version__}')
    print('# data: GENERATED test records in the original CIFAR / ImageNet '
          'archive formats, prepared by the real TFDS builders '
          f'({prep_s:.0f} s) - not the real datasets')
    print('# model: params/cifar10.SmallConvNetTask train step on a fixed '
          'in-memory batch (no input pipeline)')
    print()
    print(f'| {"input generator":<50} | {"input ex/s":>10} | '
          f'{"small model ex/s (classes, size, batch)":>40} | '
          f'{"input / model":>13} |')
    print(f'|{"-" * 52}|{"-" * 12}:|{"-" * 42}:|{"-" * 15}:|')
    for name, rate, model, mrate in rows:
      desc = f'{mrate:.0f} ({model[0]}, {model[1]}, {model[2]})'
      print(f'| {name:<50} | {rate:>10.0f} | {desc:>40} | {rate / mrate:>12.1f}x |')
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  main()
