"""Memory budgets the NumPy kernels keep to, in a numpy-free module so that dlc.analysis can predict a
training step's peak from them without importing the engine."""

# The most bytes of im2col columns built at once. A layer within it keeps its columns for backward
# (LeNet-5's first layer at batch 64: 5 MiB); a larger one goes through in bands of output rows and
# rebuilds them in backward, since kept columns cost kh*kw times the input (VGG-16's second layer at
# batch 64: 7 GiB). With 8 MiB a LeNet-5 step at batch 256 peaks at 1.6x the training-memory
# estimate of docs/conventions.md instead of 3.7x.
COLS_BYTES = 8 << 20
