"""skybroker: run a batch or ML job on the cheapest cloud that fits it.

Importing this package is cheap on purpose: nothing heavy (cloud SDKs, rich, numpy) is imported here.
"""
__version__ = "0.1.0"
