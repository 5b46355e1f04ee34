"""Cloud drivers behind one small protocol (see base.py), loaded lazily by name (registry.py) so that
`broker --help` and planning never import a cloud SDK."""
