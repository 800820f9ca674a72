"""jointphot: joint, prior-based photometry of a high-resolution and a low-resolution image."""
__version__ = "0.1.0"


def tool_versions():
    """{name: version} of Python and the Python packages the numbers depend on (here, not in a module of
    the chain, so that `jointphot versions` stays cheap: each pipeline task calls it)."""
    import platform
    out = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "astropy"):
        out[name] = __import__(name).__version__
    return out
