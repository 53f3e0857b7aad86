"""CIFAR-10/100 and ImageNet inputs over real on-disk TFDS datasets that the
real TFDS builders prepared offline from original-format archives."""
import os
import re
import shlex

import numpy as np
import pytest
import tensorflow as tf

from tasks import cifar
from tasks import digits
from tasks import imagenet
from tasks import synthetic_archives
from tasks import tfds_data
from tests import tasks_data


def _AllBatches(gen):
  return [{k: v.numpy() for k, v in b.items()} for b in gen.GetDataset()]


@pytest.mark.parametrize('dataset', ['cifar10', 'cifar100'])
def testCifarRealBuilderRoundTrip(dataset):
  data_dir, labels, images = tasks_data.Cifar(dataset)
  gen = cifar.InputParams(dataset, 'test', 8, data_dir=data_dir,
                          normalize=False).Instantiate()
  assert gen.num_examples == tasks_data.NUM_TEST
  assert gen.num_classes == cifar.NUM_CLASSES[dataset]
  batches = _AllBatches(gen)
  # 20 examples in batches of 8: the last batch is padded with weight 0.
  assert [b['weight'].sum() for b in batches] == [8, 8, 4]
  assert all(b['image'].shape == (8, 32, 32, 3) for b in batches)
  w = np.concatenate([b['weight'] for b in batches])
  got_x = np.concatenate([b['image'] for b in batches])[w > 0]
  got_y = np.concatenate([b['label'] for b in batches])[w > 0]
  # Every written record comes back exactly once, with its own label.
  want = {images['test'][i].tobytes(): labels['test'][i]
          for i in range(tasks_data.NUM_TEST)}
  got = {np.round(x * 255).astype(np.uint8).tobytes(): y
         for x, y in zip(got_x, got_y)}
  assert got == want


def testCifarArchiveChecksumIsChecked(tmp_path):
  # The download step is the real one: an archive that is not the
  # registered download is rejected unless explicitly trusted.
  archive, _, _ = synthetic_archives.WriteCifarArchive(
      'cifar10', str(tmp_path / 'a'), 10, 10)
  from tensorflow_datasets.core.download import download_manager
  with pytest.raises(download_manager.NonMatchingChecksumError):
    tfds_data.PrepareCifarFromArchive('cifar10', str(tmp_path / 'd'), archive)


def testMissingDataErrorIsClearAndLazy(tmp_path):
  empty = str(tmp_path / 'nothing_here')
  gen = cifar.InputParams('cifar100', 'train', 4, data_dir=empty,
                          download=False).Instantiate()
  assert gen.ImageShape() == [32, 32, 3]  # no data needed for that
  for fn in (gen.CheckData, gen.GetDataset):
    with pytest.raises(tfds_data.MissingDataError) as e:
      fn()
    msg = str(e.value)
    assert "'cifar100'" in msg and empty in msg
    assert ('python -m tasks.prepare_data --dataset=cifar100 '
            f'--data_dir={empty}') in msg
  gen = imagenet.InputParams('validation', 4, data_dir=empty).Instantiate()
  with pytest.raises(tfds_data.MissingDataError) as e:
    gen.GetDataset()
  msg = str(e.value)
  assert "'imagenet2012'" in msg and 'ILSVRC2012_img_train.tar' in msg
  manual = os.path.join(empty, 'downloads', 'manual')
  assert f'into {manual} ' in msg
  # The command in the message prepares the data once the archives are there.
  synthetic_archives.WriteImageNetArchives(manual, ['n01440764'], 2, 3)
  cmd = shlex.split(re.search(r'`(python -m tasks.prepare_data [^`]*)`',
                              msg).group(1))
  from tasks import prepare_data
  assert prepare_data.Run(cmd[3:]) == 0
  assert gen.num_examples == 3
  assert len(_AllBatches(gen)) == 1


def testDownloadFailsFastWithoutNetwork(tmp_path, monkeypatch):
  # download=True (the default) lets TFDS download CIFAR on first use; with
  # no network the error comes at once, not after minutes of retries.
  def NoDns(host, *a, **k):
    raise OSError(f'cannot resolve {host}')
  monkeypatch.setattr(tfds_data.socket, 'getaddrinfo', NoDns)
  empty = str(tmp_path / 'e')
  gen = cifar.InputParams('cifar10', 'train', 4, data_dir=empty).Instantiate()
  with pytest.raises(tfds_data.MissingDataError) as e:
    gen.CheckData()
  msg = str(e.value)
  assert 'www.cs.toronto.edu does not resolve' in msg
  assert f'--dataset=cifar10 --data_dir={empty} --archive=' in msg
  assert f'tasks.prepare_data --dataset=cifar10 --data_dir={empty} (' in msg


def testMissingSplitError():
  data_dir, _, _ = tasks_data.Cifar('cifar10')
  tfds_data.LoadBuilder('cifar10', data_dir, 'test[:50%]')
  with pytest.raises(tfds_data.MissingDataError, match="has no split 'valid"):
    tfds_data.LoadBuilder('cifar10', data_dir, 'validation')
  with pytest.raises(ValueError, match='split must be one of'):
    cifar.InputParams('cifar10', 'validation', 4).Instantiate()


@pytest.mark.parametrize('kw, match', [
    (dict(dataset='cifar1000'), 'dataset must be one of'),
    (dict(cutout_size=40), 'cutout_size'),
    (dict(pad_crop=-1), 'pad_crop'),
    (dict(dtype=tf.int32), 'float32 or bfloat16'),
    (dict(dtype='float33'), 'float32 or bfloat16'),
    (dict(std=(1.0, 0.0, 1.0)), 'std'),
    (dict(image_size=0), 'image_size'),
])
def testCifarBadParamsFailAtInstantiate(kw, match):
  p = cifar.InputParams('cifar10', 'train', 4)
  p.Set(**kw)
  with pytest.raises(ValueError, match=match):
    p.Instantiate()


def testCifarTrainingBatchesUpscaledBfloat16():
  data_dir, _, _ = tasks_data.Cifar('cifar10')
  gen = cifar.InputParams('cifar10', 'train', 16, image_size=48,
                          cutout_size=8, dtype=tf.bfloat16,
                          data_dir=data_dir).Instantiate()
  it = iter(gen.GetDataset())
  # Training repeats forever with full batches (50 examples, 4 batches of 16).
  for _ in range(4):
    b = next(it)
    assert b['image'].shape == (16, 48, 48, 3)
    assert b['image'].dtype == tf.bfloat16
    assert b['label'].dtype == tf.int32
    assert float(tf.reduce_sum(b['weight'])) == 16.0
  # Same seed, same batches (stateless per-example augmentation).
  again = next(iter(gen.GetDataset()))
  first = next(iter(gen.GetDataset()))
  np.testing.assert_array_equal(again['image'].numpy(), first['image'].numpy())


def _OneImage():
  rng = np.random.default_rng(3)
  return tf.constant(rng.integers(0, 256, (32, 32, 3)), tf.uint8)


def testCifarPadCropAndFlipAreShiftsAndMirrors():
  gen = cifar.InputParams('cifar10', 'train', 4, normalize=False,
                          pad_crop=4).Instantiate()
  img = _OneImage()
  x = tf.image.convert_image_dtype(img, tf.float32).numpy()
  padded = np.pad(x, [[4, 4], [4, 4], [0, 0]])
  outs = []
  for s in range(12):
    out, label = gen._Preprocess(img, tf.constant(7, tf.int64),
                                 tf.constant([s, 1], tf.int64))
    out = out.numpy()
    assert int(label) == 7
    outs.append(out)
    matches = [(dy, dx, f) for dy in range(9) for dx in range(9)
               for f in (False, True)
               if np.array_equal(out, (lambda c: c[:, ::-1] if f else c)(
                   padded[dy:dy + 32, dx:dx + 32]))]
    assert matches, f'seed {s}: output is not a flipped/shifted crop'
  # Different seeds give different crops.
  assert len({o.tobytes() for o in outs}) > 6
  # Evaluation leaves the image alone.
  ev = cifar.InputParams('cifar10', 'test', 4, normalize=False).Instantiate()
  out, _ = ev._Preprocess(img, tf.constant(1, tf.int64),
                          tf.constant([0, 1], tf.int64))
  np.testing.assert_array_equal(out.numpy(), x)


def testCifarNormalisationAndCutout():
  img = _OneImage()
  x = tf.image.convert_image_dtype(img, tf.float32).numpy()
  ev = cifar.InputParams('cifar10', 'test', 4).Instantiate()
  out, _ = ev._Preprocess(img, tf.constant(1, tf.int64),
                          tf.constant([0, 1], tf.int64))
  want = (x - np.array(cifar.MEAN['cifar10'])) / np.array(cifar.STD['cifar10'])
  np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
  tr = cifar.InputParams('cifar10', 'train', 4, pad_crop=0, random_flip=False,
                         normalize=False, cutout_size=10).Instantiate()
  x = x + 0.01  # no exact zeros outside the cutout square
  sizes = []
  for s in range(10):
    out, _ = tr._Preprocess(tf.constant(x), tf.constant(1, tf.int64),
                            tf.constant([s, 2], tf.int64))
    zero = np.all(out.numpy() == 0, axis=-1)
    ys, xs = np.nonzero(zero)
    assert 0 < zero.sum() <= 100
    # The zeroed pixels form one rectangle (the square, clipped at borders).
    assert zero.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
    assert np.ptp(ys) < 10 and np.ptp(xs) < 10
    sizes.append(zero.sum())
  assert max(sizes) == 100  # an interior square is the full 10x10


def testCifarHostShardsAreDisjointAndCoverTheSplit():
  data_dir, _, _ = tasks_data.Cifar('cifar10')
  seen = []
  for i in range(2):
    gen = cifar.InputParams('cifar10', 'test', 4, data_dir=data_dir,
                            normalize=False, shard_index=i,
                            num_shards=2).Instantiate()
    assert gen.num_examples == tasks_data.NUM_TEST // 2
    bs = _AllBatches(gen)
    w = np.concatenate([b['weight'] for b in bs])
    x = np.concatenate([b['image'] for b in bs])[w > 0]
    seen.append({v.tobytes() for v in x})
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) == tasks_data.NUM_TEST


def testImagenetRealBuilderTrainAndValidation():
  data_dir = tasks_data.ImageNet()
  tr = imagenet.InputParams('train', 4, image_size=40,
                            data_dir=data_dir).Instantiate()
  assert tr.num_examples == (len(tasks_data.IMAGENET_SYNSETS) *
                             tasks_data.IMAGENET_PER_CLASS)
  names = open(_LabelsFile()).read().split()
  want_labels = {names.index(s) for s in tasks_data.IMAGENET_SYNSETS}
  it = iter(tr.GetDataset())
  for _ in range(4):
    b = next(it)
    assert b['image'].shape == (4, 40, 40, 3)
    assert set(b['label'].numpy()) <= want_labels
  ev = imagenet.InputParams('validation', 4, image_size=40,
                            data_dir=data_dir).Instantiate()
  bs = _AllBatches(ev)
  w = np.concatenate([b['weight'] for b in bs])
  assert w.sum() == tasks_data.IMAGENET_NUM_VAL
  got = sorted(np.concatenate([b['label'] for b in bs])[w > 0])
  # TFDS labels validation images from its bundled list, by file name.
  val_synsets = open(_LabelsFile().replace('labels.txt',
                                           'validation_labels.txt')).read().split()
  want = sorted(names.index(s) for s in
                val_synsets[:tasks_data.IMAGENET_NUM_VAL])
  assert got == want


def _LabelsFile():
  import tensorflow_datasets as tfds
  return str(tfds.core.tfds_path('datasets/imagenet2012/labels.txt'))


def _Jpeg(h, w):
  rng = np.random.default_rng(0)
  img = synthetic_archives.ClassImages([3], h, w, rng)[0]
  return tf.io.encode_jpeg(img), img


def testImagenetRandomResizedCropWindow():
  gen = imagenet.InputParams('train', 4, image_size=32).Instantiate()
  jpeg, _ = _Jpeg(60, 90)
  areas = []
  for s in range(40):
    y, x, h, w = gen._CropWindow(jpeg, tf.constant([s, 5], tf.int64)).numpy()
    assert 0 <= y and 0 <= x and y + h <= 60 and x + w <= 90
    frac = h * w / (60 * 90)
    areas.append(frac)
    if frac < 1.0:  # not the whole-image fallback
      assert 0.08 - 0.02 <= frac <= 1.0
      assert 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1
  assert min(areas) < 0.6 and len(set(areas)) > 10


def testImagenetEvalIsResizedCentreCrop():
  gen = imagenet.InputParams('validation', 4, image_size=32,
                             normalize=False).Instantiate()
  jpeg, _ = _Jpeg(60, 90)
  y, x, h, w = gen._CropWindow(jpeg, tf.constant([0, 0], tf.int64)).numpy()
  side = int(0.875 * 60)
  assert (h, w) == (side, side)
  assert (y, x) == ((60 - side + 1) // 2, (90 - side + 1) // 2)
  out, _ = gen._Preprocess(jpeg, tf.constant(0, tf.int64),
                           tf.constant([0, 0], tf.int64))
  full = tf.image.convert_image_dtype(tf.io.decode_jpeg(jpeg, channels=3),
                                      tf.float32)
  want = tf.image.resize(full[y:y + h, x:x + w], [32, 32])
  np.testing.assert_allclose(out.numpy(), want.numpy(), atol=2 / 255)


def testPrepareDataCli(tmp_path, capsys):
  from tasks import prepare_data
  d = str(tmp_path / 'd')
  assert prepare_data.Run(['--dataset=cifar100', f'--data_dir={d}',
                           '--synthetic', '--num_train=30',
                           '--num_test=10']) == 0
  assert 'GENERATED' in capsys.readouterr().out
  gen = cifar.InputParams('cifar100', 'test', 4, data_dir=d).Instantiate()
  assert gen.num_examples == 10
  assert prepare_data.Run(['--dataset=imagenet2012', f'--data_dir={d}',
                           '--synthetic', '--num_train=1',
                           '--num_test=3']) == 0
  gen = imagenet.InputParams('validation', 2, data_dir=d).Instantiate()
  assert gen.num_examples == 3
  with pytest.raises(SystemExit):  # imagenet needs archives
    prepare_data.Run(['--dataset=imagenet2012', f'--data_dir={d}/x'])


def testBatchSpecsMatchTheDataset():
  """BatchSpecs (what planners trace) describes the batches GetDataset
  yields, without reading data."""
  gen = digits.TrainParams(batch_size=16).Instantiate()
  batch = next(iter(gen.GetDataset()))
  specs = gen.BatchSpecs()
  assert sorted(specs) == sorted(batch)
  for k, spec in specs.items():
    assert spec.shape == batch[k].shape and spec.dtype == batch[k].dtype, k
  assert gen.BatchSpecs(4)['image'].shape[0] == 4
