"""The task: a network plus its loss, metrics, optimizer and schedule.

The train step is one function for every network: a plain network is
differentiated with a tape; a network that implements
`ComputeLossAndGradients` (the GPipe pipeline) computes loss and gradients
itself, micro-batch by micro-batch, and the task applies them the same way.
"""
import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import context
from gpipe_lingvo import hyperparams
from gpipe_lingvo import init_from_checkpoint
from gpipe_lingvo import metrics as metrics_lib
from gpipe_lingvo import optimizers
from gpipe_lingvo import lr_schedules
from gpipe_lingvo.layers import loss as loss_lib


def TrainParams():
  """Training-loop params (Lingvo's task.train)."""
  p = hyperparams.Params()
  p.Define('max_steps', 1000, 'Stop after this many steps.')
  p.Define('save_interval_steps', 200, 'Checkpoint every N steps.')
  p.Define('eval_interval_steps', 0,
           'In train_and_eval, evaluate every N steps (0: only at the end).')
  p.Define('log_interval_steps', 50, 'Console/TensorBoard every N steps.')
  p.Define('keep_checkpoint_max', 5, 'Checkpoints kept.')
  p.Define('optimizer', optimizers.Optimizer.Params(), 'Optimizer.')
  p.Define('lr_schedule', lr_schedules.LearningRateSchedule.Params(),
           'Learning-rate schedule.')
  return p


def SplitNetworkOutput(out):
  """Networks return logits, or a dict with 'logits' (+ 'aux_logits')."""
  if isinstance(out, dict):
    if 'logits' not in out:
      raise ValueError(f'Network output dict needs "logits", has {sorted(out)}.')
    return out['logits'], out.get('aux_logits')
  return out, None


class BaseTask(base_layer.BaseLayer):
  """A network, its optimizer and the train step; subclasses say what of a
  batch goes into the network and how the loss is computed
  (NetworkInputs) and what evaluation reports (EvalStep)."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.name = 'task'
    p.Define('network', None, 'Layer params of the network.')
    p.Define('weight_decay', 0.0, 'L2 coefficient on regularised weights.')
    p.Define('train', TrainParams(), 'Training loop, optimizer, schedule.')
    p.Define('init_from_checkpoint', init_from_checkpoint.Params(),
             'Initialise variables from another checkpoint at the start of a '
             'fresh run (transfer learning; by default all but the head).')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    if p.network is None:
      raise ValueError('task.network is not set: give the layer params of '
                       'the network.')
    init_from_checkpoint.CheckParams(p.init_from_checkpoint)
    self.CreateChild('network', p.network)
    self.lr_schedule = p.train.lr_schedule.Instantiate()
    self.optimizer = p.train.optimizer.Instantiate()

  def BuildOptimizer(self):
    """Creates optimizer slots; not done in __init__ so that building a
    model only to count its parameters allocates no slot memory."""
    placement = (self.network.VariablePlacement()
                 if hasattr(self.network, 'VariablePlacement') else None)
    self.optimizer.Build(self.TrainableVariables(), placement)
    if hasattr(self.network, 'CreateGradientAccumulators'):
      # The pipeline's gradient sums, before any train step is traced.
      self.network.CreateGradientAccumulators()

  def WeightDecayLoss(self):
    wd = self.params.weight_decay
    regs = self.RegularizedVariables()
    if not wd or not regs:
      return tf.constant(0.0)
    return wd * 0.5 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in regs])

  # -- step functions ---------------------------------------------------------

  def NetworkInputs(self, batch):
    """(network inputs, labels nest, loss_fn) of a batch as the pipeline
    takes them: loss_fn(net_out, labels) -> (loss contribution, metric sums)
    of one micro-batch; contributions add up to the batch loss."""
    raise NotImplementedError(f'{type(self).__name__}.NetworkInputs')

  def ComputeLossAndGradients(self, batch, step):
    """Returns (loss, metric sums, grads aligned with TrainableVariables())."""
    variables = self.TrainableVariables()
    net = self.network
    inputs, labels, loss_fn = self.NetworkInputs(batch)
    if hasattr(net, 'ComputeLossAndGradients'):
      # The pipeline: micro-batched forward/backward inside the network.
      loss, sums, net_grads, stats = net.ComputeLossAndGradients(
          inputs, labels, loss_fn, step)
      grads_by_id = {id(v): g for v, g in zip(net.TrainableVariables(), net_grads)}
      with tf.GradientTape() as tape:
        wd_loss = self.WeightDecayLoss()
      wd_grads = tape.gradient(wd_loss, variables,
                               unconnected_gradients='zero')
      grads = [grads_by_id.get(id(v), tf.zeros_like(v)) + wg
               for v, wg in zip(variables, wd_grads)]
      return loss + wd_loss, sums, grads, stats
    stats = {}
    with context.Scope(training=True, step=step, micro_batch=0, stats=stats):
      with tf.GradientTape() as tape:
        loss, sums = loss_fn(net.FProp(inputs), labels)
        loss += self.WeightDecayLoss()
    grads = tape.gradient(loss, variables, unconnected_gradients='zero')
    # Embedding lookups give sparse gradients; the update takes dense ones.
    grads = [tf.convert_to_tensor(g) for g in grads]
    return loss, sums, grads, stats

  def StatsUpdates(self, stats):
    """{layer path: [(variable, new value)]} for one step's statistics."""
    return {layer.path: layer.StatsUpdates(stats[layer.path])
            for layer in self.Layers() if layer.path in (stats or {})}

  def TrainStep(self, batch, step, cross_replica=None):
    """One synchronous update if finite (CheckedTrainStep). Returns
    (metric sums, lr, grad norm)."""
    sums, lr, norm, _ = self.CheckedTrainStep(batch, step, cross_replica)
    return sums, lr, norm

  def CheckedTrainStep(self, batch, step, cross_replica=None):
    """One synchronous update, applied only if it is finite.

    The loss, the gradient norm and each new batch-norm statistic are
    checked before anything is assigned, so a diverging step leaves every
    variable as it was. The cost is small: the gradient norm is the one the
    optimizer needs anyway (computed once), plus one is_finite reduction
    over the new statistics (per-channel vectors) and a tf.cond around the
    update. Returns (metric sums, lr, grad norm, finite), finite mapping
    'loss', 'grad_norm' and each batch-norm layer path to a scalar bool;
    the update was applied iff all are True.

    cross_replica(loss, sums, grads, stats), if given, returns the same
    four summed over the data-parallel replicas (distribute.replicas), so
    every replica checks the same values and takes the same branch.
    """
    loss, sums, grads, stats = self.ComputeLossAndGradients(batch, step)
    if cross_replica is not None:
      loss, sums, grads, stats = cross_replica(loss, sums, grads, stats)
    lr = self.lr_schedule.Value(step)
    norm = tf.linalg.global_norm(grads)
    updates = self.StatsUpdates(stats)
    finite = {'loss': tf.math.is_finite(loss),
              'grad_norm': tf.math.is_finite(norm)}
    for path, pairs in updates.items():
      finite[path] = tf.reduce_all(tf.math.is_finite(
          tf.concat([tf.reshape(v, [-1]) for _, v in pairs], 0)))
    ok = tf.reduce_all(tf.stack(list(finite.values())))

    def Apply():
      self.optimizer.Apply(grads, self.TrainableVariables(), lr, norm=norm)
      for pairs in updates.values():
        for var, value in pairs:
          var.assign(value)
      return tf.constant(True)

    tf.cond(ok, Apply, lambda: tf.constant(False))
    sums = dict(sums)
    sums['total_loss'] = loss
    return sums, lr, norm, finite


class ClassificationTask(BaseTask):
  """Image classification: network(image) -> logits, softmax cross-entropy."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('num_classes', 0, 'Number of classes.')
    p.Define('label_smoothing', 0.0, 'Label smoothing of the main loss.')
    p.Define('aux_loss_weight', 0.0,
             'Weight of the auxiliary head loss (networks emitting '
             '"aux_logits").')
    return p

  def __init__(self, params, parent_path=''):
    p = params
    if p.network is None:
      raise ValueError('task.network is not set: give the layer params of '
                       'the network that maps images to logits.')
    if p.num_classes <= 1:
      raise ValueError(f'task.num_classes must be > 1, got {p.num_classes}.')
    super().__init__(params, parent_path)
    self.CreateChild('loss', loss_lib.SoftmaxCrossEntropy.Params().Set(
        num_classes=p.num_classes, label_smoothing=p.label_smoothing))

  # -- pieces the pipeline engine calls per micro-batch ----------------------

  def LossSums(self, net_out, labels, weights, global_batch):
    """(loss contribution, metric sums) of one (micro-)batch.

    The contribution is sum(weight * loss) / global_batch so that summing
    it over micro-batches gives the mini-batch mean exactly.
    """
    logits, aux_logits = SplitNetworkOutput(net_out)
    per_ex = self.loss.FProp(logits, labels)
    if aux_logits is not None and self.params.aux_loss_weight:
      per_ex += self.params.aux_loss_weight * self.loss.FProp(aux_logits, labels)
    weights = tf.cast(weights, tf.float32)
    loss_sum = tf.reduce_sum(per_ex * weights)
    sums = metrics_lib.MetricSums(logits, labels, weights, self.params.num_classes)
    sums['loss'] = loss_sum
    return loss_sum / tf.cast(global_batch, tf.float32), sums

  def NetworkInputs(self, batch):
    label = batch['label']
    weight = batch.get('weight', tf.ones_like(label, tf.float32))
    n = tf.shape(label)[0]
    return (batch['image'], (label, weight),
            lambda out, lw: self.LossSums(out, lw[0], lw[1], n))

  def EvalStep(self, batch):
    """Metric sums of one evaluation batch (inference mode)."""
    label = batch['label']
    weight = batch.get('weight', tf.ones_like(label, tf.float32))
    with context.Scope(training=False):
      out = self.network.FProp(batch['image'])
    _, sums = self.LossSums(out, label, weight, tf.shape(label)[0])
    return sums
