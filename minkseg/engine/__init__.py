"""Training, self-training, pseudo labels, checkpoints and the distributed wrapper."""
