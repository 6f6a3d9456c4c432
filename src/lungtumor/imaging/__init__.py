"""The Volume type and what works on it: reading and writing, orientation, resampling, components, lungs."""
