"""The Transformer as a flat list of pipeline cells, and its stack params.

Cells (each one unit the engine can cut between): `embedding` (source and
target token + position embeddings), `encoder_i`, `encoder_ln`,
`decoder_i`, `decoder_ln` (final layer norms, pre-LN only) and `softmax`.
A decoder-only language model (num_encoder_layers = 0) has no source side.

What travels between cells is a dict:
  'src' [b, s, d] float, 'src_segment_ids' [b, s] int32   (encoder side)
  'tgt' [b, t, d] float, 'tgt_segment_ids' [b, t] int32   (decoder side)
Segment ids are 0 on padding and number the sequences of a packed row
(1, 2, ...). Every layer builds its attention masks from them (and, for
causal attention, from token indices); masks are not carried: they would
cost O(t^2) per example in every stage boundary and stash, ids cost O(t).
Positions are used by the embedding only. The last cell returns the
logits [b, t, vocab]; labels never enter the network: the task's loss
function reads them after the last cell (in the pipeline's last chunk).

The network's input is a dict of int32 [b, len] tensors: 'src_ids',
'tgt_ids' (decoder inputs: BOS + target) and, with packed_input,
'src_segment_ids', 'src_positions', 'tgt_segment_ids', 'tgt_positions'.
Without packed_input id 0 is padding and positions count from 0.
"""
from typing import List

import tensorflow as tf

from gpipe_lingvo import base_layer
from gpipe_lingvo import hyperparams
from gpipe_lingvo.layers import dropout
from gpipe_lingvo.layers import embedding
from gpipe_lingvo.layers import normalization
from gpipe_lingvo.layers import sequential
from gpipe_lingvo.layers import softmax
from gpipe_lingvo.layers import transformer as transformer_lib
from gpipe_lingvo.pipeline import pipelined_network

TIE_KEY = 'target_embedding'
SIDES = ('src', 'tgt')


def _SegmentsAndPositions(ids, nest, side, packed):
  """Segment ids and positions of one side: given (packed input), or from
  the padding (id 0) of a single sequence per row."""
  if packed:
    for key in (f'{side}_segment_ids', f'{side}_positions'):
      if key not in nest:
        raise ValueError(f'packed_input needs {key!r} in the network input; '
                         f'it has {sorted(nest)}.')
    return nest[f'{side}_segment_ids'], nest[f'{side}_positions']
  seg = tf.cast(tf.not_equal(ids, 0), tf.int32)
  pos = tf.broadcast_to(tf.range(ids.shape[1]), tf.shape(ids))
  return seg, pos


class TransformerEmbeddingCell(base_layer.BaseLayer):
  """Input ids -> source and target vectors (first cell)."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('model_dim', 0, 'Width d.')
    p.Define('source_vocab_size', 0, 'Source vocabulary (0: no source side, '
             'a language model).')
    p.Define('target_vocab_size', 0, 'Target vocabulary.')
    p.Define('max_length', 0, 'Position table size: the longest row.')
    p.Define('position', 'sinusoidal', f'One of {embedding.POSITION_TYPES}.')
    p.Define('packed_input', False, 'Inputs carry segment ids and positions.')
    p.Define('dropout_prob', 0.0, 'Dropout on the embedded vectors.')
    p.Define('share_embedding_and_softmax', False,
             'Offer the target embedding to the softmax (tied weights).')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    emb = embedding.Embedding.Params().Set(
        embedding_dim=p.model_dim, max_length=p.max_length,
        position=p.position)
    if p.source_vocab_size:
      self.CreateChild('src_emb', emb.Copy().Set(
          vocab_size=p.source_vocab_size))
    self.CreateChild('tgt_emb', emb.Copy().Set(
        vocab_size=p.target_vocab_size,
        tie_key=TIE_KEY if p.share_embedding_and_softmax else ''))
    self.CreateChild('dropout', dropout.Dropout.Params().Set(
        keep_prob=1.0 - p.dropout_prob))

  @property
  def sides(self):
    return SIDES if self.params.source_vocab_size else SIDES[1:]

  def EmbedSide(self, side, ids, positions):
    emb = self.src_emb if side == 'src' else self.tgt_emb
    return self.dropout.FProp(emb.FProp(ids, positions))

  def FProp(self, inputs):
    out = {}
    for side in self.sides:
      key = f'{side}_ids'
      if key not in inputs:
        raise ValueError(f'{self.path}: the network input needs {key!r}; it '
                         f'has {sorted(inputs)}.')
      ids = inputs[key]
      seg, pos = _SegmentsAndPositions(ids, inputs, side,
                                       self.params.packed_input)
      out[side] = self.EmbedSide(side, ids, pos)
      out[f'{side}_segment_ids'] = seg
    return out


class TransformerLayerCell(base_layer.BaseLayer):
  """One encoder layer (updates 'src'), decoder layer (updates 'tgt',
  attends 'src') or language-model layer (updates 'tgt', causal)."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('side', 'src', "'src' (encoder) or 'tgt' (decoder / LM).")
    p.Define('layer', transformer_lib.TransformerLayer.Params(),
             'The Transformer layer.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    if self.params.side not in SIDES:
      raise ValueError(f'{self.path}: side must be one of {SIDES}.')
    self.CreateChild('layer', self.params.layer)

  def FProp(self, inputs):
    side = self.params.side
    out = dict(inputs)
    if self.layer.params.has_aux_atten:
      out[side] = self.layer.FProp(inputs[side], inputs[f'{side}_segment_ids'],
                                   inputs['src'], inputs['src_segment_ids'])
    else:
      out[side] = self.layer.FProp(inputs[side], inputs[f'{side}_segment_ids'])
    return out


class TransformerLayerNormCell(base_layer.BaseLayer):
  """The final layer norm of one side (pre-LN stacks)."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('side', 'src', "'src' or 'tgt'.")
    p.Define('model_dim', 0, 'Width d.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    self.CreateChild('ln', normalization.LayerNorm.Params().Set(
        dim=self.params.model_dim))

  def FProp(self, inputs):
    side = self.params.side
    return dict(inputs, **{side: self.ln.FProp(inputs[side])})


class TransformerSoftmaxCell(base_layer.BaseLayer):
  """Target vectors -> logits [b, t, vocab] (the last cell)."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('model_dim', 0, 'Width d.')
    p.Define('vocab_size', 0, 'Target vocabulary.')
    p.Define('share_embedding_and_softmax', False,
             "Use the target embedding matrix (tied weights).")
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    self.CreateChild('softmax', softmax.SoftmaxLogits.Params().Set(
        input_dim=p.model_dim, num_classes=p.vocab_size,
        tie_key=TIE_KEY if p.share_embedding_and_softmax else ''))

  def FProp(self, inputs):
    return self.softmax.FProp(inputs['tgt'])


class TransformerStack:
  """Lingvo's GPipeTransformerStack fields -> the cells and the network
  (a PipelinedNetwork when num_stages or num_micro_batches > 1, else
  layers.Sequential with the same cells and checkpoint keys).

    stack = transformer.TransformerStack.Params().Set(
        model_dim=128, hidden_dim=512, num_heads=4, num_encoder_layers=2,
        num_decoder_layers=2, source_vocab_size=8000,
        target_vocab_size=8000, num_stages=2, num_micro_batches=4)
    task.network = stack.Instantiate().NetworkParams()
  """

  @classmethod
  def Params(cls) -> hyperparams.InstantiableParams:
    p = hyperparams.InstantiableParams(cls)
    p.Define('name', 'network', 'Name of the network layer.')
    p.Define('model_dim', 512, 'Width d of every layer.')
    p.Define('hidden_dim', 2048, 'Feed-forward hidden width.')
    p.Define('num_heads', 8, 'Attention heads (divide atten_hidden_dim).')
    p.Define('atten_hidden_dim', 0,
             'Attention width: num_heads x head width (0: model_dim).')
    p.Define('num_encoder_layers', 6,
             'Encoder layers; 0 makes a decoder-only language model.')
    p.Define('num_decoder_layers', 6, 'Decoder layers.')
    p.Define('source_vocab_size', 32000, 'Source vocabulary (0 with no '
             'encoder).')
    p.Define('target_vocab_size', 32000, 'Target vocabulary.')
    p.Define('max_length', 256, 'Position table: the longest row.')
    p.Define('position', 'sinusoidal', f'One of {embedding.POSITION_TYPES}.')
    p.Define('packed_input', False,
             'Inputs carry segment ids and positions (several sequences '
             'per row).')
    p.Define('pre_layer_norm', True,
             'Layer norm before each sub-layer and a final one per side '
             '(True), or after each sub-layer (Vaswani et al.).')
    p.Define('residual_dropout_prob', 0.1,
             'Dropout on embeddings and residual branches.')
    p.Define('atten_dropout_prob', 0.0, 'Dropout on attention probabilities.')
    p.Define('relu_dropout_prob', 0.0, 'Dropout on the ReLU output.')
    p.Define('share_embedding_and_softmax', False,
             'One matrix for the target embedding (first stage) and the '
             'softmax (last stage).')
    p.Define('fprop_dtype', None, 'Activation dtype (None: float32).')
    # What the pipeline needs (PipelinedNetwork's fields of the same name).
    p.Define('num_stages', 1, 'Pipeline stages K.')
    p.Define('num_micro_batches', 1, 'Micro-batches M.')
    p.Define('schedule', 'gpipe', 'Pipeline schedule.')
    p.Define('virtual_stages', 1, 'Chunks per device v.')
    p.Define('remat', 'always', 'Re-materialization policy.')
    p.Define('partition', 'uniform', 'Cells per chunk (see the engine).')
    # Not PipelinedNetwork's default ('dataflow'): through trainer.py on a
    # 2-core host, the unrolled step of these models holds 1.4-2.1x more
    # at M=8 at the same speed or slower, and more than the plan says
    # (README, the planner against trainer.py for the Transformer).
    p.Define('execution', 'ticks', "'ticks' or 'dataflow'.")
    p.Define('device_type', 'cpu', 'Pipeline topology device type.')
    return p

  def __init__(self, params):
    self.params = params.Copy()
    p = self.params
    if p.model_dim <= 0 or p.hidden_dim <= 0:
      raise ValueError(f'{p.name}: model_dim and hidden_dim must be > 0, '
                       f'got {p.model_dim}, {p.hidden_dim}.')
    atten_dim = p.atten_hidden_dim or p.model_dim
    if p.num_heads <= 0 or atten_dim <= 0 or atten_dim % p.num_heads:
      raise ValueError(f'{p.name}: num_heads ({p.num_heads}) must divide '
                       f'atten_hidden_dim ({atten_dim}; model_dim unless '
                       'set).')
    if p.num_decoder_layers < 1 or p.num_encoder_layers < 0:
      raise ValueError(f'{p.name}: need num_decoder_layers >= 1 and '
                       f'num_encoder_layers >= 0.')
    if bool(p.num_encoder_layers) != bool(p.source_vocab_size):
      raise ValueError(
          f'{p.name}: an encoder needs a source vocabulary and a language '
          f'model (num_encoder_layers=0) has none; got num_encoder_layers='
          f'{p.num_encoder_layers}, source_vocab_size={p.source_vocab_size}.')

  @property
  def decoder_only(self) -> bool:
    return self.params.num_encoder_layers == 0

  def _Layer(self, side, i, causal, cross):
    p = self.params
    name = 'encoder' if side == 'src' else 'decoder'
    return TransformerLayerCell.Params().Set(
        name=f'{name}_{i}', side=side,
        layer=transformer_lib.TransformerLayer.Params().Set(
            model_dim=p.model_dim, hidden_dim=p.hidden_dim,
            num_heads=p.num_heads, atten_hidden_dim=p.atten_hidden_dim,
            mask_self_atten=causal,
            has_aux_atten=cross, pre_layer_norm=p.pre_layer_norm,
            atten_dropout_prob=p.atten_dropout_prob,
            residual_dropout_prob=p.residual_dropout_prob,
            relu_dropout_prob=p.relu_dropout_prob))

  def Cells(self) -> List[hyperparams.Params]:
    p = self.params
    cells = [TransformerEmbeddingCell.Params().Set(
        name='embedding', model_dim=p.model_dim,
        source_vocab_size=p.source_vocab_size,
        target_vocab_size=p.target_vocab_size, max_length=p.max_length,
        position=p.position, packed_input=p.packed_input,
        dropout_prob=p.residual_dropout_prob,
        share_embedding_and_softmax=p.share_embedding_and_softmax)]
    cells += [self._Layer('src', i, False, False)
              for i in range(p.num_encoder_layers)]
    if p.num_encoder_layers and p.pre_layer_norm:
      cells.append(TransformerLayerNormCell.Params().Set(
          name='encoder_ln', side='src', model_dim=p.model_dim))
    cells += [self._Layer('tgt', i, True, not self.decoder_only)
              for i in range(p.num_decoder_layers)]
    if p.pre_layer_norm:
      cells.append(TransformerLayerNormCell.Params().Set(
          name='decoder_ln', side='tgt', model_dim=p.model_dim))
    cells.append(TransformerSoftmaxCell.Params().Set(
        name='softmax', model_dim=p.model_dim,
        vocab_size=p.target_vocab_size,
        share_embedding_and_softmax=p.share_embedding_and_softmax))
    if p.fprop_dtype is not None:
      cells = [c.Set(fprop_dtype=p.fprop_dtype) for c in cells]
    return cells

  def NetworkParams(self) -> hyperparams.InstantiableParams:
    p = self.params
    if p.num_stages == 1 and p.num_micro_batches == 1:
      return sequential.Sequential.Params().Set(name=p.name,
                                                cells=self.Cells())
    net = pipelined_network.PipelinedNetwork.Params().Set(
        name=p.name, cells=self.Cells(), num_stages=p.num_stages,
        num_micro_batches=p.num_micro_batches, schedule=p.schedule,
        virtual_stages=p.virtual_stages, remat=p.remat,
        partition=p.partition, execution=p.execution)
    net.topology.device_type = p.device_type
    return net
