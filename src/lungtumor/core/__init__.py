"""Errors, typed configuration and the runtime (device, precision): what every stage uses."""
