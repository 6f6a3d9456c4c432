"""Case reports: HTML viewer, GIF animation, PNG montage."""
