"""Data-parallel replicas: what the trainer does differently per worker.

The trainer calls these hooks; `SingleProcess` makes each a no-op,
`replicated_step.ReplicatedStep` runs the whole step inside `strategy.run`
(TPU), and `MultiWorker` implements them on a
tf.distribute.MultiWorkerMirroredStrategy:

- every worker runs the whole K-stage pipeline on its own local devices, on
  its shard of the global batch (InputParams);
- once per step the gradients (as means), the metric sums and the batch-norm
  statistics (as sums: count, sum, sum of squares) are summed over the
  workers by one collective all-reduce per dtype (collectives.py), and every
  worker applies the same update to the same weights;
- before the first step the chief's state (weights, optimizer slots, step),
  restored from a checkpoint or fresh, is broadcast to every worker, after a
  check that all workers run the same params (SyncState);
- only the chief writes into the logdir; the others write their small
  outputs (events, params.txt) into a temporary directory deleted at the end,
  and no checkpoints.

Why the pipeline keeps its own variables instead of the strategy's mirrored
ones: a variable created under `strategy.scope()` is placed by the strategy on
the replica's device, whatever `tf.device` the stage asks for (checked with
TF 2.21: a variable created under tf.device('/device:CPU:1') inside the scope
of a 2-worker strategy became a MirroredVariable on .../device:CPU:0). Stage
weights must stay on their stage's device, which is the point of the
pipeline on GPUs, so the variables are created outside the scope and the
strategy is used for its collectives only.
"""
import hashlib
import shutil
import contextlib
import tempfile
from typing import Callable, ContextManager, List, Sequence

import numpy as np
import tensorflow as tf

from gpipe_lingvo import context
from gpipe_lingvo.distribute import collectives
from gpipe_lingvo.distribute import world as world_lib


class SingleProcess:
  """One process, one replica: every hook is a no-op."""

  is_chief = True
  # Checkpoints may hold this process's input iterator (input_position): one
  # process reads the whole input.
  saves_input_iterator = True

  def __init__(self, world=None):
    self.world = world

  def Logdir(self, logdir):
    """The directory this process writes to."""
    return logdir

  def Scope(self) -> ContextManager:
    """Scope in which the task and every variable are created."""
    return contextlib.nullcontext()

  def InputParams(self, params, split):
    del split
    return params

  def Dataset(self, input_generator, start=0):
    """The training batches the step takes, from position `start` of the
    global stream (the examples read before a resumed run's step)."""
    if start:
      return input_generator.GetDatasetFrom(start)
    return input_generator.GetDataset()

  def TrainStep(self, task, batch, global_step):
    """task.CheckedTrainStep: (sums, lr, grad norm, finite flags)."""
    return task.CheckedTrainStep(batch, global_step)

  def SyncState(self, params_text, variables, print_fn):
    del params_text, variables, print_fn

  def VoteStop(self, signalled: bool) -> None:
    """Before a step: whether this process received a stop signal."""
    del signalled

  def StopAgreed(self, sums, signalled: bool) -> bool:
    """After a step (its metric sums): whether the run stops now."""
    del sums
    return signalled

  def Close(self, wait_for_peers=False):
    del wait_for_peers


def StateVariables(task: tf.Module, global_step: tf.Variable,
                   extra: Sequence[tf.Variable] = ()) -> List[tf.Variable]:
  """Everything a checkpoint holds (the task's variables, `extra` such as
  the input position, the step), in an order every worker agrees on; the
  global step last."""
  seen, out = set(), []
  for v in list(task.variables) + list(extra) + [global_step]:
    if v.ref() not in seen:
      seen.add(v.ref())
      out.append(v)
  return out


def SumStepResults(all_reduce: Callable[[List[tf.Tensor]], Sequence],
                   num_replicas: int, loss, sums, grads, stats):
  """A step's (loss, metric sums, grads, batch-norm stats) summed over the
  replicas by `all_reduce` (a list of tensors -> their sums).

  Each replica's loss and gradients are means over its own batch, so they
  are averaged (the global mean, as the replicas' batches are equal);
  metric sums and batch-norm statistics are sums and are summed.
  """
  r = float(num_replicas)
  paths = sorted(stats)
  stat_sums = [[tf.add_n(list(parts)) for parts in zip(*stats[p])]
               for p in paths]
  keys = sorted(sums)
  flat = ([loss / r] + [g / r for g in grads] + [sums[k] for k in keys] +
          [t for triple in stat_sums for t in triple])
  out = list(all_reduce(flat))
  loss, out = out[0], out[1:]
  grads, out = out[:len(grads)], out[len(grads):]
  sums = dict(zip(keys, out[:len(keys)]))
  out = out[len(keys):]
  stats = {p: [tuple(out[3 * i:3 * i + 3])] for i, p in enumerate(paths)}
  return loss, sums, grads, stats


def _Fingerprint(params_text, variables):
  """[params hash, number of state values], exact in float64."""
  digest = hashlib.sha256(params_text.encode('utf-8')).digest()
  size = sum(int(np.prod(v.shape)) for v in variables)
  return [float(int.from_bytes(digest[:6], 'big')), float(size)]


_STOP_VOTES = 'stop_votes'  # Not a metric: popped by StopAgreed.


class MultiWorker(SingleProcess):
  """One replica per worker process, summed by a MultiWorkerMirroredStrategy."""

  # The chief's checkpoint cannot hold the other workers' iterators: every
  # worker skips to the position of the restored step instead.
  saves_input_iterator = False

  def __init__(self, world, strategy):
    super().__init__(world)
    self.strategy = strategy
    self.is_chief = world.is_chief
    self._tmp = None
    # This worker's vote to stop, summed over the workers with the step's
    # results: every worker learns after the same step that one of them
    # received a signal, so all stop there (a worker that stopped alone
    # would leave the others waiting in the next step's sum).
    self._stop_vote = tf.Variable(0.0, trainable=False, name='stop_vote')

  def Logdir(self, logdir):
    if self.is_chief:
      return logdir
    if self._tmp is None:
      self._tmp = tempfile.mkdtemp(
          prefix=f'gpipe_lingvo_worker{self.world.worker_index}_')
    return self._tmp

  def InputParams(self, params, split):
    """The training input reads this worker's shard: global_batch / R
    examples per batch, either from its share of the files (a TFDS
    sub-split) or as its slice of each global batch of the whole stream
    (base_input_generator.SHARDS_IN_EXAMPLES). Evaluation
    reads the whole split on every worker (no collective, so workers stay
    in step) and only the chief's results are written."""
    if split != 'train':
      return params
    p = params.Copy()
    p.shard_index = self.world.worker_index
    p.num_shards = self.world.num_replicas
    return p

  def TrainStep(self, task, batch, global_step):
    offset = self.world.worker_index * self.world.num_micro_batches
    with context.Scope(micro_batch_offset=offset):
      return task.CheckedTrainStep(batch, global_step,
                                   cross_replica=self.CrossReplica)

  def VoteStop(self, signalled):
    self._stop_vote.assign(1.0 if signalled else 0.0)

  def StopAgreed(self, sums, signalled):
    del signalled
    return sums.pop(_STOP_VOTES) > 0

  def CrossReplica(self, loss, sums, grads, stats):
    """Sums a step's results over the workers (one collective per dtype;
    SumStepResults), and the workers' votes to stop."""
    sums = dict(sums)
    sums[_STOP_VOTES] = self._stop_vote.read_value()
    return SumStepResults(
        lambda flat: collectives.AllReduceSum(self.strategy, flat),
        self.world.num_replicas, loss, sums, grads, stats)

  def SyncState(self, params_text, variables, print_fn):
    """Checks that all workers run the same params, then copies the chief's
    state to every worker, so a resumed or fine-tuned run starts identical
    everywhere (checkpoints are read by the chief only)."""
    n = self.world.num_workers
    mine = np.zeros([n, 2], np.float64)
    mine[self.world.worker_index] = _Fingerprint(params_text, variables)
    every = tf.function(lambda x: collectives.AllReduceSum(
        self.strategy, [x])[0], autograph=False)(tf.constant(mine)).numpy()
    odd = [i for i in range(n) if not np.array_equal(every[i], every[0])]
    if odd:
      raise world_lib.WorldError(
          f'Worker(s) {odd} run different params or variables than the '
          'chief (worker 0); start every worker with the same --model and '
          '--model_params_override.')
    tf.function(lambda: collectives.BroadcastFromChief(
        self.strategy, variables, self.is_chief), autograph=False)()
    if not self.is_chief:
      step = int(variables[-1].numpy())
      print_fn(f'Worker {self.world.worker_index}: state of the chief '
               f'received (step {step}).')

  def Close(self, wait_for_peers=False):
    """Removes the temporary logdir. wait_for_peers (after a successful
    run): first wait until every worker is done, so that none exits while
    another still works (TensorFlow would report it as a lost task)."""
    if wait_for_peers:
      tf.function(lambda: collectives.AllReduceSum(
          self.strategy, [tf.zeros([1])]), autograph=False)()
    if self._tmp is not None:
      shutil.rmtree(self._tmp, ignore_errors=True)
      self._tmp = None
