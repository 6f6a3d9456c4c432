"""From a Volume to the model's frame and back; the prepared caches for training."""
