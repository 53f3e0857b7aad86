"""Scale-out: data-parallel replicas of the pipeline on tf.distribute.

world.py     the world of a run (TF_CONFIG / --tpu + params), pure Python
strategy.py  the strategy and the replica hooks the trainer calls
replicas.py  what each worker does differently (one replica per worker)
replicated_step.py  the whole step inside strategy.run (TPU; XLA on one CPU/GPU)
collectives.py  packed all-reduce and broadcast through the strategy
tpu.py       TPU slice: resolver, device assignment, stage -> logical cores
launch.py    local multi-worker launcher (python -m gpipe_lingvo.distribute.launch)
"""
