"""The benchmark and evaluation matrix on a Ray cluster (``--cluster ADDRESS``).

Ray schedules; MedWB only says what each task needs:

- a *node kind* is a custom resource ``medwb-kind:<name>`` of 1 per node, given when a
  server joins (``medwb cluster join``: CPU model, cores, ISA tier, e.g.
  ``medwb-kind:amd-epyc-7b13-2c-avx2``). Servers of one kind are interchangeable;
- a timing task (one variant on one kind) asks for its kind's unit *and* all the node's
  CPUs, so two timed variants never share cores and nothing else runs beside it; Ray
  retries it on another node of the same kind when its node dies;
- an evaluation shard asks for its threads' CPUs only, so shards pack onto every node;
- the driver (``medwb.cluster.bench``, ``medwb.cluster.evaluation``) appends every result
  to the run folder as it arrives, rebuilds the records from them, and resumes from them.

Nothing here is imported without ``--cluster``: Ray is an optional extra.
"""
