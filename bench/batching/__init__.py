"""Many samples or many models in one batched computation, for any method or attack that needs it.

* :mod:`bench.batching.per_sample`: per-sample parameter gradients (and the statistics cosines between them need)
  of one network from one batched forward and backward (ATS's privacy score; gradient inversion);
* :mod:`bench.batching.grouped_networks`: K copies of a sequential network run as one grouped network
  (batched shadow models; K gradient-inversion attacks at once).

Nothing here knows a paper, a method or an attack: it sits below ``bench.attacks`` and ``bench.ats``, which both use it.
"""
