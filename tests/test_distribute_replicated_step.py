"""The TPU path's step without a TPU: the whole step inside strategy.run
(ReplicatedStep) with logical-core placement, compiled with XLA on CPU
under a OneDeviceStrategy, against the plain one-process step; and the
per-host input of distribute_datasets_from_function."""
import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import input_position
from gpipe_lingvo import model_registry
from gpipe_lingvo import trainer_lib
from gpipe_lingvo.distribute import replicated_step
from gpipe_lingvo.distribute import strategy as strategy_lib
from gpipe_lingvo.distribute import tpu
from gpipe_lingvo.distribute import world as world_lib
from gpipe_lingvo.pipeline import placement
from tasks import digits


def _Params(where):
  """digits.ConvNetPipelined without dropout (XLA draws other masks)."""
  p = model_registry.GetParams('digits.ConvNetPipelined')
  for cell in p.task.network.cells:
    if cell.name == 'dropout':
      cell.keep_prob = 1.0
  p.task.network.topology.placement = where
  p.task.train.Set(log_interval_steps=1, save_interval_steps=100)
  return p


def testInputPerHostGivesReplicaBatchesOfItsShard():
  ctx = tf.distribute.InputContext(num_input_pipelines=2,
                                   input_pipeline_id=1,
                                   num_replicas_in_sync=4)
  p = replicated_step.ReplicaInputParams(digits.TrainParams(batch_size=64),
                                         ctx)
  assert (p.num_shards, p.shard_index) == (2, 1)
  gen = p.Instantiate()
  assert gen.shard_batch_size == 16  # global 64 / R=4
  batch = next(iter(gen.GetDataset()))
  assert batch['image'].shape[0] == 16
  with pytest.raises(ValueError, match='divisible'):
    replicated_step.ReplicaInputParams(digits.TrainParams(batch_size=62), ctx)


def testLogicalCoresStartTheReplicatedStepOnOneDevice():
  world = world_lib.FromParams(_Params('logical_cores'))
  assert world.placement == 'logical_cores'
  assert world.Describe()[-1].startswith('  placement: stages on logical cores')
  hooks = strategy_lib.Start(world)
  assert isinstance(hooks, replicated_step.ReplicatedStep)
  assert isinstance(hooks.strategy, tf.distribute.OneDeviceStrategy)
  assert hooks.jit_compile
  with pytest.raises(world_lib.WorldError, match="'logical_cores' runs the "
                     'step as one XLA program'):
    world_lib.FromParams(_Params('logical_cores'), (
        '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, '
        '"task": {"type": "worker", "index": 0}}'))


def testReplicatedXlaStepTrainsLikeTheDeviceScopeStep(tmp_path):
  """Three training steps through the trainer: the TPU path's hooks
  (strategy scope, distributed input, step inside strategy.run under XLA,
  the sum through the replica context) reach the weights, batch-norm
  statistics and optimizer slots of the plain K=2 device-scope run."""
  runs = {}
  for where in ('device_scopes', 'logical_cores'):
    params = _Params(where)
    hooks = strategy_lib.Start(world_lib.FromParams(params))
    logs = []
    trainer = trainer_lib.Trainer(params, str(tmp_path / where),
                                  print_fn=logs.append, replicas=hooks)
    trainer.Train(max_steps=3)
    runs[where] = (trainer, logs)
  ds, lc = runs['device_scopes'][0], runs['logical_cores'][0]
  assert isinstance(lc.task.network.placement, placement.LogicalCores)
  assert int(lc._global_step.numpy()) == 3
  names = [v.name for v in ds.task.variables]
  assert names == [v.name for v in lc.task.variables]
  fresh = _Params('device_scopes').task.Instantiate()
  moved = {}
  for name, a, b, a0 in zip(names, ds.task.variables, lc.task.variables,
                            fresh.variables):
    tol = 1e-4 * max(1.0, float(tf.reduce_max(tf.abs(a))))
    assert float(tf.reduce_max(tf.abs(a - b))) <= tol, name
    moved[name] = float(tf.reduce_max(tf.abs(a - a0)))
  # Every variable (weights, statistics, slots) moved by more than the
  # tolerance: the equality is not that of untouched variables.
  assert min(moved.values()) > 1e-4, min(moved, key=moved.get)
  loss_lines = [[l for l in logs if l.startswith('step')]
                for _, logs in runs.values()]
  assert len(loss_lines[0]) == len(loss_lines[1]) == 3
  # Both checkpoints have the same keys (layer paths), whatever the placement;
  # only the single process saves its input iterator (strategy.run's input
  # resumes by skipping).
  keys = [[k for k, _ in tf.train.list_variables(tf.train.latest_checkpoint(
      str(tmp_path / where / 'ckpt'))) if k != input_position.ITERATOR_KEY]
          for where in runs]
  assert keys[0] == keys[1] and 'task/network/fc1/w/.ATTRIBUTES/VARIABLE_VALUE' in keys[0]


def testTpuStartSaysFirstThatThePathNeverRanOnATpu(monkeypatch):
  """tpu.Start with its two hardware calls replaced: a v3-8 Topology built
  from coordinates, and a one-device strategy standing for TPUStrategy."""
  coords = np.array([[[x, y, 0, c] for y in range(2) for x in range(2)
                      for c in range(2)]], np.int32)
  slice_ = tf.tpu.experimental.Topology(mesh_shape=[2, 2, 1, 2],
                                        device_coordinates=coords)
  monkeypatch.setattr(tpu, 'Connect', lambda address: (None, slice_))
  made = {}

  def MakeStrategy(resolver, assignment):
    made['assignment'] = assignment
    return tf.distribute.OneDeviceStrategy('/cpu:0')

  monkeypatch.setattr(tpu, 'MakeStrategy', MakeStrategy)
  p = _Params('')
  p.task.network.topology.Set(device_type='tpu',
                              tpu_computation_shape=[1, 1, 1, 2])
  lines = []
  hooks = tpu.Start(world_lib.FromParams(p, '', 'my-tpu'), p, lines.append)
  assert lines[0] == replicated_step.UNTESTED_ON_TPU
  assert 'never run on a TPU' in lines[0]
  assert lines[1] == 'world: TPU my-tpu, 1 host(s)'
  assert '  replicas R=4, stages K=2 x 1 tpu device(s) per stage' in lines
  assert sum(l.startswith('  replica ') for l in lines) == 4 * 2
  assert isinstance(hooks, replicated_step.ReplicatedStep)
  assert hooks.world.num_replicas == made['assignment'].num_replicas == 4
  assert hooks.jit_compile  # Not a TPUStrategy here; on a TPU: False.
