"""Inference backends, one file each: a runtime class that loads and runs a model, and its
registry entry. The protocol both follow, and the list of backends, are in
``medwb.backends.registry``; ``medwb.backends.variants`` turns ``backend:[weights/]precision``
into checked variants and their artifacts."""
