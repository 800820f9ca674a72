"""jointphot: joint, prior-based photometry of a high-resolution and a low-resolution image."""
__version__ = "0.1.0"
