"""The models the workbench trains or fabricates: the shipped demo model (recipe, build,
quality gate), its tokenizer, the training loop, and random-weight checkpoints of real
model shapes for speed-only benchmarks."""
