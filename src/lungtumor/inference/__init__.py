"""Models at predict time: the checkpoint reader, the 2D and 3D predictors, the nodule detector."""
