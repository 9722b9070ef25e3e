"""The clinical tasks as data: prompt templates, the knowledge table (``knowledge/*.yaml``)
and the synthetic case generator that writes the training corpus and held-out sets."""
