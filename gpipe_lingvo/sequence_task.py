"""Sequence tasks over token ids: translation and language modelling.

The network (a Transformer stack's cells, pipelined or not) maps the input
nest to logits [b, t, vocab]; the loss is per-token softmax cross-entropy
with label smoothing, computed after the last cell (in the pipeline's last
chunk, from the labels the engine hands it there), weighted by the target
tokens that are not padding. Metrics: per-token loss, log-perplexity and
perplexity (without smoothing), token accuracy; for translation, BLEU of
greedy decodes of the evaluated split (sacreBLEU, its standard 13a
tokenizer on the detokenised English), decoded un-pipelined.
"""
import tensorflow as tf

from gpipe_lingvo import base_task
from gpipe_lingvo import context
from gpipe_lingvo import errors
from gpipe_lingvo.models import transformer
from gpipe_lingvo.models import transformer_decode


class InputMismatchError(errors.ParamsError):
  """The prepared data does not fit the model's params."""


class SequenceTask(base_task.BaseTask):
  """Transformer translation (source -> target) or language model."""

  @classmethod
  def Params(cls):
    p = super().Params()
    p.Define('label_smoothing', 0.1, 'Mass spread uniformly over the '
             'vocabulary in the training loss (not in the perplexity).')
    p.Define('bleu', True, 'Evaluation of a translation model decodes the '
             "split's sentences greedily and reports sacreBLEU.")
    p.Define('decode_max_length', 0,
             'Target tokens decoded at most (0: the position table).')
    p.Define('bos_id', 2, 'Begin-of-sequence id (decoding starts with it).')
    p.Define('eos_id', 3, 'End-of-sequence id.')
    return p

  def __init__(self, params, parent_path=''):
    super().__init__(params, parent_path)
    p = self.params
    if not 0.0 <= p.label_smoothing < 1.0:
      raise ValueError('task.label_smoothing must be in [0, 1), got '
                       f'{p.label_smoothing}.')
    cells = getattr(self.network, 'cells', None) or []
    self._parts = transformer_decode.Parts(cells)

  @property
  def embedding(self) -> transformer.TransformerEmbeddingCell:
    return self._parts.embedding

  @property
  def has_source(self) -> bool:
    return bool(self.embedding.params.source_vocab_size)

  @property
  def vocab_size(self) -> int:
    return self.embedding.params.target_vocab_size

  # -- checks against the data ----------------------------------------------------

  def CheckInput(self, input_generator) -> None:
    """Raises InputMismatchError, naming the fix, when the prepared data's
    tokenizers or row length do not fit the params (before training)."""
    if not hasattr(input_generator, 'VocabSizes'):
      return
    emb = self.embedding.params
    have = input_generator.VocabSizes()
    want = {'source': emb.source_vocab_size} if self.has_source else {}
    want['target'] = emb.target_vocab_size
    for side, size in want.items():
      if have[side] != size:
        raise InputMismatchError(
            f'The {side} tokenizer of {input_generator.dataset_name} has '
            f'{have[side]} pieces but the model has {side}_vocab_size='
            f'{size}; set the stack\'s {side}_vocab_size to {have[side]} '
            '(or prepare the data with a matching vocabulary).')
    if emb.position != 'none' and input_generator.length > emb.max_length:
      raise InputMismatchError(
          f'Rows of {input_generator.dataset_name} hold '
          f'{input_generator.length} tokens but the position table has '
          f'max_length={emb.max_length}; set the stack\'s max_length to at '
          f'least {input_generator.length}.')

  # -- loss ------------------------------------------------------------------------

  def NetworkInputs(self, batch):
    sides = ('src', 'tgt') if self.has_source else ('tgt',)
    fields = (('ids', 'segment_ids', 'positions')
              if self.embedding.params.packed_input else ('ids',))
    inputs = {f'{s}_{f}': batch[f'{s}_{f}'] for s in sides for f in fields}
    row_weight = tf.cast(batch['weight'], tf.float32)
    seg = batch['tgt_segment_ids']
    token_weight = tf.cast(seg > 0, tf.float32) * row_weight[:, None]
    sequences = tf.cast(tf.reduce_max(seg, 1), tf.float32) * row_weight
    total = tf.reduce_sum(token_weight)
    labels = (batch['tgt_labels'], token_weight, sequences)
    return inputs, labels, lambda logits, lab: self.LossSums(logits, lab,
                                                            total)

  def LossSums(self, logits, labels, total_weight):
    """(sum of weighted smoothed token losses / total_weight, metric sums)
    of one (micro-)batch."""
    ids, w, sequences = labels
    logits = tf.cast(logits, tf.float32)
    log_probs = tf.nn.log_softmax(logits)
    nll = -tf.gather(log_probs, ids, batch_dims=2)
    ls = self.params.label_smoothing
    smoothed = (1.0 - ls) * nll - ls * tf.reduce_mean(log_probs, -1)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                               ids), tf.float32)
    sums = {'loss': tf.reduce_sum(w * smoothed),
            'nll': tf.reduce_sum(w * nll),
            'top1': tf.reduce_sum(w * correct),
            'count': tf.reduce_sum(w),
            'examples': tf.reduce_sum(sequences)}
    return sums['loss'] / tf.maximum(total_weight, 1.0), sums

  # -- evaluation ------------------------------------------------------------------

  def EvalStep(self, batch):
    inputs, labels, loss_fn = self.NetworkInputs(batch)
    with context.Scope(training=False):
      logits = self.network.FProp(inputs)
    return loss_fn(logits, labels)[1]

  def DecodeMetrics(self, input_generator):
    """{'bleu': corpus BLEU} of greedy decodes of the split's sentences
    (translation models whose input yields sentences); else {}."""
    if not (self.params.bleu and self.has_source and
            hasattr(input_generator, 'SentenceBatches')):
      return {}
    hyps, refs = self.Decode(input_generator)
    import sacrebleu  # pylint: disable=import-outside-toplevel
    return {'bleu': float(sacrebleu.corpus_bleu(hyps, [refs],
                                                tokenize='13a').score)}

  def Decode(self, input_generator):
    """(hypotheses, references): detokenised greedy decodes of every
    sentence of the split, and their reference texts. The input generator
    provides SentenceBatches() and Detokenize(ids)."""
    max_len = (self.params.decode_max_length or
               self.embedding.params.max_length)
    p = self.params

    @tf.function(autograph=False)
    def DecodeBatch(ids, seg, pos):
      return transformer_decode.GreedyDecode(
          self.network.cells, ids, seg, pos, max_len, p.bos_id, p.eos_id)

    hyps, refs = [], []
    for batch in input_generator.SentenceBatches():
      out = DecodeBatch(batch['src_ids'], batch['src_segment_ids'],
                        batch['src_positions']).numpy()
      for row, keep, ref in zip(out, batch['weight'], batch['target']):
        if keep:
          hyps.append(input_generator.Detokenize(row))
          refs.append(ref.decode('utf-8') if isinstance(ref, bytes) else ref)
    return hyps, refs

