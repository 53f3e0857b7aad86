"""SingleTaskModelParams: what a registered model declares (Lingvo style)."""
from gpipe_lingvo import hyperparams


class SingleTaskModelParams:
  """Subclass, override Train()/Test() and Task(), register with
  @model_registry.RegisterSingleTaskModel."""

  def Train(self):
    """Input generator params for training."""
    raise NotImplementedError(f'{type(self).__name__}.Train')

  def Dev(self):
    """Input generator params for the development split (defaults to Test)."""
    return self.Test()

  def Test(self):
    """Input generator params for evaluation."""
    raise NotImplementedError(f'{type(self).__name__}.Test')

  def Task(self):
    """Task params: network, loss, metrics, optimizer, schedule."""
    raise NotImplementedError(f'{type(self).__name__}.Task')

  def Model(self):
    """All params of the model: task, input splits and training loop."""
    p = hyperparams.Params()
    p.Define('model', getattr(type(self), 'REGISTRY_KEY', type(self).__name__),
             'Registered model name.')
    p.Define('task', self.Task(), 'Task params.')
    p.Define('train', self.Train(), 'Training input generator.')
    p.Define('dev', self.Dev(), 'Dev input generator.')
    p.Define('test', self.Test(), 'Test input generator.')
    return p
