"""Datasets: the MSD layout (load, check) and the synthetic chest-CT phantoms."""
