"""GPipe's Transformer sizes (Huang et al. 2019), for planning and counting.

Table 1's Transformer-L: L layers of d_model 2048, feed-forward 8192, 32
heads, with a 32k vocabulary (32,000 pieces); L = 3, 13, 103, 415, 1663 at
Naive-1, Pipeline-1, -8, -32, -128 (282.2M, 785.8M, 5.3B, 21.0B, 83.9B
parameters). A layer is self-attention plus feed-forward and the two
vocabulary matrices are an input embedding and a softmax, not tied: a
decoder-only language model (docs/models.md, "What L counts").

The multilingual T(64, 16384, 32): 64 encoder and 64 decoder layers (128),
d_model 1024, feed-forward 16384, 32 heads of width 64 (attention width
2048), a 64k vocabulary (64,000) with the target embedding tied to the
softmax, 16 partitions ("6B" parameters).

No corpus of these sizes is on this machine: the input gives batch shapes
only (tasks/sequence_shapes.py), for `--mode=plan` (which allocates no
weights) and `--mode=summary`. Batch shapes, M and the optimizer are our
choice where the notes of the paper do not give them.
"""
from gpipe_lingvo import base_model_params
from gpipe_lingvo import model_registry
from gpipe_lingvo import sequence_task
from gpipe_lingvo.models import transformer
from tasks import sequence_shapes

# Rows and tokens of a Transformer-L batch, micro-batches when pipelined.
L_BATCH, L_LENGTH, L_MICRO_BATCHES = 32, 1024, 32
# The multilingual model: rows of 256 source and 256 target tokens.
T_BATCH, T_LENGTH, T_MICRO_BATCHES = 64, 256, 32


def TransformerLStack(num_layers: int, num_stages: int = 1,
                      num_micro_batches: int = 1):
  """Table 1's Transformer-L with `num_layers` layers."""
  pipelined = num_stages > 1 or num_micro_batches > 1
  return transformer.TransformerStack.Params().Set(
      model_dim=2048, hidden_dim=8192, num_heads=32, num_encoder_layers=0,
      num_decoder_layers=num_layers, source_vocab_size=0,
      target_vocab_size=32000, max_length=L_LENGTH, packed_input=True,
      share_embedding_and_softmax=False, num_stages=num_stages,
      num_micro_batches=num_micro_batches,
      remat='always' if pipelined else 'never')


def TaskParams(stack):
  p = sequence_task.SequenceTask.Params()
  p.network = stack.Instantiate().NetworkParams()
  p.bleu = False
  p.train.optimizer.Set(type='adam', beta1=0.9, beta2=0.98, epsilon=1e-9)
  return p


class _Shapes(base_model_params.SingleTaskModelParams):
  """Inputs that give batch shapes only."""
  BATCH, LENGTH = L_BATCH, L_LENGTH

  def Train(self):
    return sequence_shapes.SequenceShapes.Params().Set(
        name='train', batch_size=self.BATCH, length=self.LENGTH)

  def Dev(self):
    return self.Train().Set(name='dev', is_training=False)

  def Test(self):
    return self.Train().Set(name='test', is_training=False)


class _TransformerL(_Shapes):
  LAYERS, STAGES = 3, 1

  def Task(self):
    m = 1 if (self.STAGES, self.LAYERS) == (1, 3) else L_MICRO_BATCHES
    return TaskParams(TransformerLStack(self.LAYERS, self.STAGES, m))


@model_registry.RegisterSingleTaskModel
class TransformerL3(_TransformerL):
  """Naive-1: 3 layers, one device, no micro-batches, no recompute."""
  LAYERS, STAGES = 3, 1


@model_registry.RegisterSingleTaskModel
class TransformerL13(_TransformerL):
  """Pipeline-1: 13 layers on one device, M = 32, recompute."""
  LAYERS, STAGES = 13, 1


@model_registry.RegisterSingleTaskModel
class TransformerL103(_TransformerL):
  """Pipeline-8: 103 layers, K = 8."""
  LAYERS, STAGES = 103, 8


@model_registry.RegisterSingleTaskModel
class TransformerL415(_TransformerL):
  """Pipeline-32: 415 layers, K = 32."""
  LAYERS, STAGES = 415, 32


@model_registry.RegisterSingleTaskModel
class TransformerL1663(_TransformerL):
  """Pipeline-128: 1663 layers, K = 128 (83.9B parameters)."""
  LAYERS, STAGES = 1663, 128


def MultilingualStack(num_layers: int = 64, num_stages: int = 16,
                      num_micro_batches: int = T_MICRO_BATCHES):
  """T(num_layers, 16384, 32): num_layers encoder and decoder layers."""
  return transformer.TransformerStack.Params().Set(
      model_dim=1024, hidden_dim=16384, num_heads=32, atten_hidden_dim=2048,
      num_encoder_layers=num_layers, num_decoder_layers=num_layers,
      source_vocab_size=64000, target_vocab_size=64000, max_length=T_LENGTH,
      packed_input=True, share_embedding_and_softmax=True,
      num_stages=num_stages, num_micro_batches=num_micro_batches,
      remat='always')


@model_registry.RegisterSingleTaskModel
class TransformerT64(_Shapes):
  """The 6B multilingual T(64, 16384, 32): 128 layers, 16 partitions."""
  BATCH, LENGTH = T_BATCH, T_LENGTH

  def Task(self):
    return TaskParams(MultilingualStack())
