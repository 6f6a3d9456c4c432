"""Training with PyTorch Lightning: sampling, augmentation, losses, the LightningModules, the trainer."""
