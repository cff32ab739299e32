"""aiopt's version, in a module of its own so that the layers below the package can record it in
metadata without importing `aiopt` itself (whose __init__ wires the reference models in)."""
__version__ = "0.1.0"
