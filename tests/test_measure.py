"""measure.InterleavedSteps on fake steps (no TensorFlow): rounds in a
fresh seeded order, and a step time that a slow spell of the host does not
move."""
from gpipe_lingvo.planning import measure

# Seconds of work per step: the first four are the same computation (as
# K=2 M=1 is under gpipe, 1f1b, zb_h1 and zb_v).
WORK = {'gpipe': 1.0, '1f1b': 1.0, 'zb_h1': 1.0, 'zb_v': 1.0, 'm4': 2.0}


class _SlowSpellHost:
  """Fake steps on a host that runs at half speed for the visits
  [start, start + length) of the whole measurement, in visit order."""

  def __init__(self, start, length):
    self.start, self.length = start, length
    self.visits = []

  def Steps(self):
    return {k: self._Step(k) for k in WORK}

  def _Step(self, key):
    def Fn():
      t = len(self.visits)
      self.visits.append(key)
      slow = self.start <= t < self.start + self.length
      return 1000 + t, WORK[key] * (2.0 if slow else 1.0)
    return Fn


def _Measure(host, **kwargs):
  return measure.InterleavedSteps(host.Steps(), measure_fn=lambda fn: fn(),
                                  **kwargs)


def testEachRoundRunsEveryStepInAFreshSeededOrder():
  host = _SlowSpellHost(0, 0)
  _Measure(host, rounds=4, steps=3, seed=7)
  per_round = len(WORK) * 3
  assert len(host.visits) == 4 * per_round
  orders = []
  for r in range(4):
    visits = host.visits[r * per_round:(r + 1) * per_round]
    order = visits[::3]
    assert visits == [k for k in order for _ in range(3)]  # steps in a row
    assert sorted(order) == sorted(WORK)
    orders.append(order)
  assert len(set(map(tuple, orders))) > 1
  again = _SlowSpellHost(0, 0)
  _Measure(again, rounds=4, steps=3, seed=7)
  assert again.visits == host.visits
  other = _SlowSpellHost(0, 0)
  _Measure(other, rounds=4, steps=3, seed=8)
  assert other.visits != host.visits


def testSlowSpellOfOneRoundDoesNotMoveTheMedian():
  # Ten visits a round; the spell covers the end of round 1 and the start
  # of round 2, so each step is slow in two rounds at most of five.
  host = _SlowSpellHost(13, 10)
  got = _Measure(host, rounds=5, steps=2, seed=0)
  assert {k: r.seconds for k, r in got.items()} == WORK
  assert all(len(r.round_seconds) == 5 for r in got.values())
  assert sum(s != WORK[k] for k, r in got.items()
             for s in r.round_seconds) > 0  # the spell was measured
  for k, r in got.items():  # the largest of all ten steps' peaks
    mine = [1000 + t for t, v in enumerate(host.visits) if v == k]
    assert len(mine) == 10 and r.peak_bytes == max(mine)


def testOneAfterAnotherMeasuresTheSpell():
  # The same spell over configurations measured one after another (one
  # round of ten steps each): the one measured during it looks twice as
  # slow as the same work measured after it.
  got = _Measure(_SlowSpellHost(13, 10), rounds=1, steps=10, seed=0)
  assert any(r.seconds == 2 * WORK[k] for k, r in got.items())
  assert any(r.seconds == WORK[k] for k, r in got.items())
