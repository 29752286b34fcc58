"""Demos that show the maths of the package on toy problems (no images)."""
