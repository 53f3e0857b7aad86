"""Input generators: params-built producers of tf.data batches.

Each yields dicts {'image': float [N, H, W, C], 'label': int32 [N]} with a
fixed batch size (drop_remainder in training so the micro-batch split is
always exact; evaluation pads the last batch and marks padding with
'weight' 0 so every example counts once).

The training stream is deterministic (seeded shuffle, stateless
per-example augmentation seeds, ordered parallel map), so a resumed run
can return to any position in it exactly: through the tf.data iterator's
saved state or by skipping to the position (the `resume_by` param;
gpipe_lingvo/input_position.py).
"""
import tensorflow as tf

from gpipe_lingvo import hyperparams


RESUME_BY = ('iterator', 'skip')


class BaseInputGenerator:
  """Base class: subclasses implement _Examples() -> unbatched dataset."""

  # True where _Examples() already yields only this host's shard (e.g. a TFDS
  # sub-split), so that each host reads only its share of the files; each
  # shard then shuffles its own part, and the global batches depend on the
  # number of shards. False: in training every shard reads the whole
  # shuffled stream and keeps its slice of each global batch, so the global
  # batches are the same whatever the number of shards (a run can resume
  # with another number of workers and train the same model).
  SHARDS_IN_EXAMPLES = False

  @classmethod
  def Params(cls):
    p = hyperparams.InstantiableParams(cls)
    p.Define('name', 'input', 'Name.')
    p.Define('batch_size', 32, 'Global batch size; each of the num_shards '
             'shards yields batch_size / num_shards examples per batch.')
    p.Define('is_training', True,
             'Shuffle, augment and repeat forever (else one ordered pass).')
    p.Define('shuffle_buffer', 10000, 'Shuffle buffer size (training).')
    p.Define('seed', 1234, 'Seed for shuffling and augmentation.')
    p.Define('num_parallel_calls', -1,
             'Parallel map calls; -1 lets tf.data choose (AUTOTUNE).')
    p.Define('prefetch', -1, 'Batches to prefetch; -1 = AUTOTUNE, 0 = none.')
    p.Define('cache', True, 'Cache decoded examples in memory.')
    p.Define('dtype', tf.float32, 'Image dtype (float32 or bfloat16).')
    p.Define('shard_index', 0, 'This host\'s shard (multi-worker input).')
    p.Define('num_shards', 1, 'Number of input shards (hosts).')
    p.Define('resume_by', 'iterator',
             'How a resumed run returns to its position in the training '
             "stream. 'iterator': the tf.data iterator's state is saved in "
             'every checkpoint (exact for any pipeline tf.data can save; '
             'the checkpoint holds its buffers: cache, shuffle buffer, '
             "prefetched batches). 'skip': the checkpoint holds the number "
             'of examples read and a resumed run skips them (exact for a '
             'deterministic pipeline; reads them again, before '
             'preprocessing, at each start). Multi-worker runs always skip.')
    return p

  def __init__(self, params):
    self._params = params.Copy()
    p = self._params
    if p.batch_size <= 0:
      raise ValueError(f'{p.name}: batch_size must be > 0, got {p.batch_size}.')
    if not 0 <= p.shard_index < p.num_shards:
      raise ValueError(f'{p.name}: need 0 <= shard_index < num_shards, got '
                       f'{p.shard_index}, {p.num_shards}.')
    if p.batch_size % p.num_shards:
      raise ValueError(f'{p.name}: batch_size={p.batch_size} does not divide '
                       f'into num_shards={p.num_shards} equal shard batches.')
    if p.resume_by not in RESUME_BY:
      raise ValueError(f'{p.name}: resume_by must be one of {RESUME_BY}, got '
                       f'{p.resume_by!r}.')

  @property
  def params(self):
    return self._params

  @property
  def shard_batch_size(self):
    """Examples per batch of this shard (the global batch / num_shards)."""
    return self.params.batch_size // self.params.num_shards

  @property
  def num_classes(self):
    raise NotImplementedError

  @property
  def num_examples(self):
    """Examples in one pass over the split (this shard)."""
    raise NotImplementedError

  def ImageShape(self):
    """[H, W, C] of the images this generator yields (no data needed)."""
    raise NotImplementedError

  def BatchSpecs(self, batch_size=None):
    """tf.TensorSpec nest of one batch as GetDataset yields it (no data
    read): what planners and tracers build placeholders from. batch_size
    defaults to this shard's batch; planners pass a micro-batch size."""
    n = self.shard_batch_size if batch_size is None else batch_size
    return {'image': tf.TensorSpec([n] + list(self.ImageShape()),
                                   tf.as_dtype(self.params.dtype)),
            'label': tf.TensorSpec([n], tf.int32),
            'weight': tf.TensorSpec([n], tf.float32)}

  # True for an input that gives batch shapes only (no data on any host):
  # the planner then counts FLOPs instead of timing the cells.
  SHAPES_ONLY = False

  def StandInBatch(self, batch_size: int):
    """A batch of BatchSpecs(batch_size) without data, as costly to run as
    a real one (what the planner times): random images, class 0, weight 1."""
    specs = self.BatchSpecs(batch_size)
    return {k: (tf.ones(s.shape, s.dtype) if k == 'weight' else
                tf.random.stateless_normal(s.shape, [1, 2], dtype=s.dtype)
                if s.dtype.is_floating else tf.zeros(s.shape, s.dtype))
            for k, s in specs.items()}

  def _Examples(self):
    """Unbatched dataset of (image, label) after decoding, before augmenting."""
    raise NotImplementedError

  def _Preprocess(self, image, label, seed):
    """Per-example augmentation/normalisation; override per task.

    `seed` is a stateless seed (int64 [2]) for tf.image.stateless_random_*
    ops, made of the input's `seed` and the example's position in the
    (shuffled, repeated) stream: augmentation is reproducible, differs per
    example and epoch, and is independent of map parallelism and of where
    a run resumed.
    """
    del seed
    return image, label

  def CheckData(self):
    """Raises a clear error if the data is missing; trainers call it at
    start so that a missing evaluation split is not found only after
    training. Cheap (no examples are read)."""

  def _Autotune(self, v):
    return tf.data.AUTOTUNE if v == -1 else v

  def GetDataset(self):
    """The batches of this shard (training: from the stream's start)."""
    return self._Pipeline(0)

  def GetDatasetFrom(self, examples: int):
    """The training batches from position `examples` of the global stream
    on (the examples all shards read before): a resumed run's input.

    The base pipeline skips examples before preprocessing, keeping their
    positions (hence their augmentation seeds). A subclass with its own
    GetDataset gets it with whole batches skipped; either is exact when
    the pipeline is deterministic.
    """
    if type(self).GetDataset is BaseInputGenerator.GetDataset:
      return self._Pipeline(examples)
    return self.GetDataset().skip(examples // self.params.batch_size)

  def _Pipeline(self, start):
    p = self.params
    # Whether this shard's stream holds only its own examples (a TFDS
    # sub-split, or every R-th example when evaluating); else every shard
    # reads the whole stream.
    own_stream = p.num_shards > 1 and (self.SHARDS_IN_EXAMPLES or
                                       not p.is_training)
    ds = self._Examples()
    if own_stream and not self.SHARDS_IN_EXAMPLES:
      ds = ds.shard(p.num_shards, p.shard_index)
    if p.cache:
      ds = ds.cache()
    if p.is_training:
      ds = ds.shuffle(p.shuffle_buffer, seed=p.seed,
                      reshuffle_each_iteration=True).repeat()
    # Positions in the (shuffled, repeated) stream, kept through the skip.
    ds = ds.enumerate()
    if start:
      ds = ds.skip(start // p.num_shards if own_stream else start)
    if p.num_shards > 1 and not own_stream:
      # This shard's slice of every global batch (counted from `start`).
      b, n = self.shard_batch_size, p.batch_size
      ds = ds.filter(lambda i, ex: (i - start) % n // b == p.shard_index)
    # A stateless seed per example from the input seed and its position
    # (made unique across shards for a shard's own stream); one fused map
    # does augmentation and the output dict.
    def Example(index, ex):
      position = (index * p.num_shards + p.shard_index if own_stream
                  else index)
      seed = tf.stack([tf.constant(p.seed, tf.int64), position])
      img, lbl = self._Preprocess(ex[0], ex[1], seed)
      return {'image': tf.cast(img, p.dtype), 'label': tf.cast(lbl, tf.int32),
              'weight': tf.ones([], tf.float32)}
    ds = ds.map(
        Example, num_parallel_calls=self._Autotune(p.num_parallel_calls),
        deterministic=True)
    if p.is_training:
      ds = ds.batch(self.shard_batch_size, drop_remainder=True)
    else:
      ds = ds.batch(self.shard_batch_size).map(self._PadBatch)
    if p.prefetch:
      ds = ds.prefetch(self._Autotune(p.prefetch))
    return ds

  def _PadBatch(self, batch):
    """Pads an evaluation batch to the shard's batch size; padding has
    weight 0."""
    n = self.shard_batch_size
    def Pad(t):
      pad = n - tf.shape(t)[0]
      paddings = [[0, pad]] + [[0, 0]] * (t.shape.rank - 1)
      return tf.ensure_shape(tf.pad(t, paddings), [n] + t.shape[1:])
    return tf.nest.map_structure(Pad, batch)
