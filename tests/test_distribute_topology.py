"""Topology params, the world of a run and TPU device assignment (no TPU:
tf.tpu.experimental.Topology objects are built from a mesh shape and device
coordinates, as TensorFlow reports them for real slices)."""
import json

import numpy as np
import pytest
import tensorflow as tf

from gpipe_lingvo import devices
from gpipe_lingvo import hyperparams
from gpipe_lingvo import model_registry
from gpipe_lingvo.distribute import collectives
from gpipe_lingvo.distribute import tpu
from gpipe_lingvo.distribute import world as world_lib


def _Topo(**kw):
  return devices.TopologyParams().Set(**kw)


# -- topology params -----------------------------------------------------------


@pytest.mark.parametrize('kw, stages, match', [
    (dict(device_type='fpga'), 2, r"net.topology.device_type: must be one of "
     r"\('cpu', 'gpu', 'tpu'\), got 'fpga'"),
    (dict(devices_per_stage=0), 2, r'devices_per_stage: must be an int >= 1, '
     r'got 0'),
    (dict(num_replicas=-1), 2, r'num_replicas: must be an int >= 0, got -1'),
    (dict(gpu_memory_limit_mb=512), 2, r"gpu_memory_limit_mb: applies to "
     r"device_type 'gpu' only, but device_type is 'cpu'"),
    (dict(tpu_computation_shape=[1, 1, 1, 2]), 2, r"tpu_computation_shape: "
     r"applies to device_type 'tpu' only"),
    (dict(device_type='tpu', tpu_computation_shape=[1, 1, 1, 2],
          devices_per_stage=2), 2,
     r'tpu_computation_shape: \[1, 1, 1, 2\] spans 2 cores but num_stages=2 '
     r'x devices_per_stage=2 needs 4'),
    (dict(device_type='tpu'), 2, r'tpu_computation_shape: \[1, 1, 1, 1\] '
     r'spans 1 cores but num_stages=2 x devices_per_stage=1 needs 2'),
    (dict(device_type='tpu', tpu_computation_shape=[1, 2, 2],
          tpu_slice_shape=[2, 2, 1, 2]), 4, r'has rank 3 but '
     r'tpu_slice_shape=\[2, 2, 1, 2\] has rank 4'),
    (dict(device_type='tpu', tpu_computation_shape=[1, 1, 2, 2],
          tpu_slice_shape=[2, 2, 1, 2]), 4, r'exceeds tpu_slice_shape='
     r'\[2, 2, 1, 2\] in dimension 2'),
    (dict(device_type='tpu', tpu_computation_shape=[1, 2, 1, 2],
          tpu_slice_shape=[2, 2, 1, 2], num_replicas=3), 4,
     r'num_replicas: 3 replicas of tpu_computation_shape=\[1, 2, 1, 2\] do '
     r'not fit in tpu_slice_shape=\[2, 2, 1, 2\], which holds 2'),
    (dict(device_type='tpu', tpu_computation_shape=[1, 0, 1, 2]), 2,
     r'tpu_computation_shape: must be a list of positive ints'),
])
def testBadTopologyNamesFieldAndNumbers(kw, stages, match):
  with pytest.raises(devices.DeviceError, match=match):
    devices.CheckTopology(_Topo(**kw), stages, 'net.topology')


def testGoodTopologiesPass():
  devices.CheckTopology(_Topo(), 1)
  devices.CheckTopology(_Topo(device_type='gpu', gpu_memory_limit_mb=1024,
                              devices_per_stage=2), 4)
  devices.CheckTopology(_Topo(device_type='tpu', devices_per_stage=2,
                              tpu_computation_shape=[1, 2, 1, 2],
                              tpu_slice_shape=[2, 2, 1, 2], num_replicas=2), 2)


def testPipelinedNetworkValidatesTopologyAtInstantiate():
  p = model_registry.GetParams('digits.ConvNetPipelined')
  p.task.network.topology.tpu_slice_shape = [2, 2, 1, 2]
  with pytest.raises(devices.DeviceError,
                     match=r'task/network.topology.tpu_slice_shape: applies '
                     "to device_type 'tpu' only"):
    p.task.Instantiate()


def testTpuShapesCanBeSetByTextOverride():
  p = model_registry.GetParams('digits.ConvNetPipelined')
  hyperparams.ApplyOverrides(
      p, "task.network.topology.device_type = 'tpu'; "
      'task.network.topology.tpu_computation_shape = [1, 1, 1, 2]')
  assert p.task.network.topology.tpu_computation_shape == [1, 1, 1, 2]
  devices.CheckTopology(p.task.network.topology, 2)


# -- the world of a run --------------------------------------------------------


def _TfConfig(n, index, job='worker', chief=False):
  cluster = {'worker': [f'127.0.0.1:{2000 + i}' for i in range(n)]}
  if chief:
    cluster['chief'] = ['127.0.0.1:1999']
  return json.dumps({'cluster': cluster,
                     'task': {'type': job, 'index': index}})


def _Params(overrides=''):
  p = model_registry.GetParams('digits.ConvNetPipelined')  # K=2, M=4, 64
  if overrides:
    hyperparams.ApplyOverrides(p, overrides)
  return p


def testWorldOfTwoWorkers():
  w = world_lib.FromParams(_Params(), _TfConfig(2, 1))
  assert (w.num_workers, w.worker_index, w.num_replicas, w.num_stages) == (
      2, 1, 2, 2)
  assert (w.per_replica_batch, w.micro_batch_size) == (32, 8)
  assert not w.is_chief and w.is_multi_worker
  assert w.Describe() == [
      'world: 2 worker(s), this is /job:worker/task:1 (worker, replica 1)',
      '  replicas R=2, stages K=2 x 1 cpu device(s) per stage',
      '  batch: global 64 = 2 x per-replica 32 = 2 x 4 micro-batches of 8']


def testWorldChiefJobIsWorkerZero():
  assert world_lib.FromParams(_Params(), _TfConfig(1, 0, 'chief', True)
                              ).worker_index == 0
  w = world_lib.FromParams(_Params(), _TfConfig(1, 0, chief=True))
  assert (w.worker_index, w.num_workers, w.is_chief) == (1, 2, False)


def testWorldWithoutTfConfigIsOneProcess():
  w = world_lib.FromParams(model_registry.GetParams('digits.ConvNet'), '')
  assert (w.num_workers, w.num_replicas, w.num_stages, w.is_chief) == (
      1, 1, 1, True)
  assert not w.is_multi_worker


@pytest.mark.parametrize('tf_config, overrides, tpu_address, match', [
    (_TfConfig(3, 0), '', '', r'train.batch_size=64 does not divide into '
     r'num_replicas=3'),
    (_TfConfig(2, 0), 'task.network.num_micro_batches = 3', '',
     r'per-replica batch 32 \(train.batch_size=64 / 2 replicas\) does not '
     r'divide into num_micro_batches=3'),
    (_TfConfig(2, 2), '', '', r"task index 2 is out of range: job 'worker' "
     r'has 2 task\(s\), indices 0..1'),
    (_TfConfig(2, 0, 'chief'), '', '', r"task type 'chief' is not a job"),
    (_TfConfig(2, 0), 'task.network.topology.num_replicas = 4', '',
     r'topology.num_replicas=4 but 2 worker process\(es\) run'),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": '
     '"worker", "index": 0}}', '', '', r"job\(s\) \['ps'\]"),
    ('{not json', '', '', 'TF_CONFIG is not valid JSON'),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", '
     '"index": 0}}', '', '', r'must be a non-empty list of "host:port"'),
    (_TfConfig(2, 0), '', 'grpc://10.0.0.2:8470', 'Both TF_CONFIG and --tpu'),
    ('', '', 'my-tpu', r"--tpu=my-tpu is set but topology.device_type is "
     "'cpu'"),
    ('', "task.network.topology.device_type = 'tpu'; "
     'task.network.topology.tpu_computation_shape = [1, 1, 1, 2]', '',
     r"device_type is 'tpu' but --tpu is not set"),
])
def testWorldThatDoesNotFitFailsWithOneLine(tf_config, overrides,
                                                     tpu_address, match):
  with pytest.raises(world_lib.WorldError, match=match) as e:
    world_lib.FromParams(_Params(overrides), tf_config, tpu_address)
  assert '\n' not in str(e.value)


def testTpuWorldReplicasFromSliceShape():
  p = _Params("task.network.topology.device_type = 'tpu'; "
              'task.network.topology.tpu_computation_shape = [1, 1, 1, 2]; '
              'task.network.topology.tpu_slice_shape = [2, 2, 1, 2]')
  w = world_lib.FromParams(p, '', 'my-tpu')
  assert (w.num_replicas, w.per_replica_batch, w.micro_batch_size) == (
      4, 16, 4)


# -- TPU device assignment (hardware-free) --------------------------------------


def _Slice(mesh, hosts):
  """A Topology as TF reports it: every chip's cores, each host owning
  whole rows of the mesh (as on multi-host slices)."""
  coords = [[x, y, z, c] for z in range(mesh[2]) for y in range(mesh[1])
            for x in range(mesh[0]) for c in range(mesh[3])]
  per = len(coords) // hosts
  coords = np.array(coords, np.int32).reshape([hosts, per, 4])
  return tf.tpu.experimental.Topology(mesh_shape=mesh,
                                      device_coordinates=coords)


def testStageLogicalCores():
  assert tpu.StageLogicalCores(3, 2) == [[0, 1], [2, 3], [4, 5]]
  assert tpu.StageLogicalCores(1, 1) == [[0]]


@pytest.mark.parametrize('mesh, hosts, comp, stages, dps, replicas', [
    ([2, 2, 1, 2], 1, [1, 1, 1, 2], 2, 1, 4),   # v3-8: 4 replicas of K=2
    ([2, 2, 1, 2], 1, [2, 2, 1, 2], 4, 2, 1),   # v3-8: one replica, K=4 x 2
    ([4, 4, 1, 2], 4, [1, 2, 1, 2], 4, 1, 8),   # 4 hosts: 8 replicas of K=4
    ([4, 4, 1, 2], 4, [4, 4, 1, 2], 8, 4, 1),   # the whole slice, K=8 x 4
])
def testDeviceAssignmentPlacesStagesOnDistinctNeighbouringCores(
    mesh, hosts, comp, stages, dps, replicas):
  slice_ = _Slice(mesh, hosts)
  topo = _Topo(device_type='tpu', devices_per_stage=dps,
               tpu_computation_shape=comp, tpu_slice_shape=mesh)
  da = tpu.BuildDeviceAssignment(slice_, topo, stages)
  assert (da.num_replicas, da.num_cores_per_replica) == (replicas,
                                                         stages * dps)
  places = tpu.StagePlacement(da, stages, dps)
  assert len(places) == replicas * stages * dps
  # Every core of the slice is used at most once.
  coords = [p.coordinates for p in places]
  assert len(set(coords)) == len(coords)
  for p in places:
    assert p.stage == p.logical_core // dps
    task = int(p.host.split('/task:')[1].split('/')[0])
    # The core's host is the task that owns those coordinates.
    owned = slice_.device_coordinates[task].tolist()
    assert list(p.coordinates) in owned
    assert p.tpu_ordinal == owned.index(list(p.coordinates))
  # Consecutive logical cores of a replica are neighbours in the mesh (same
  # chip, or chips one link apart), so stage k hands over to a neighbour.
  for r in range(replicas):
    mine = [p.coordinates for p in places if p.replica == r]
    for a, b in zip(mine, mine[1:]):
      assert sum(abs(i - j) for i, j in zip(a[:3], b[:3])) <= 1, (a, b)


def testDeviceAssignmentReplicasDefaultToWhatTheSliceHolds():
  topo = _Topo(device_type='tpu', tpu_computation_shape=[1, 2, 1, 2])
  assert tpu.BuildDeviceAssignment(_Slice([4, 4, 1, 2], 4), topo,
                                   4).num_replicas == 8
  assert tpu.BuildDeviceAssignment(_Slice([4, 4, 1, 2], 4), topo, 4,
                                   num_replicas=3).num_replicas == 3


def testDeviceAssignmentChecksTheSliceAgainstTheParams():
  topo = _Topo(device_type='tpu', tpu_computation_shape=[1, 1, 1, 2],
               tpu_slice_shape=[2, 2, 1, 2])
  with pytest.raises(devices.DeviceError,
                     match=r'tpu_slice_shape=\[2, 2, 1, 2\] but the TPU slice '
                     r'has mesh shape \[4, 4, 1, 2\]'):
    tpu.BuildDeviceAssignment(_Slice([4, 4, 1, 2], 4), topo, 2)
  with pytest.raises(devices.DeviceError, match=r'spans 2 cores but '
                     r'num_stages=4 x devices_per_stage=1 needs 4'):
    tpu.BuildDeviceAssignment(_Slice([2, 2, 1, 2], 1), topo, 4)


# -- packing for the all-reduce --------------------------------------------------


def testPackingRoundTripsMixedDtypesInOneVectorPerDtype():
  ts = [tf.constant([[1., 2.], [3., 4.]]), tf.constant(5, tf.int64),
        tf.constant([6., 7., 8.]), tf.zeros([0, 3])]
  packing = collectives.Packing(ts)
  flats = packing.Pack(ts)
  assert [f.dtype for f in flats] == [tf.float32, tf.int64]
  assert flats[0].numpy().tolist() == [1., 2., 3., 4., 6., 7., 8.]
  back = packing.Unpack(flats)
  for a, b in zip(ts, back):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.numpy(), b.numpy())
