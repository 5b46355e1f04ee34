"""Test infrastructure: real OpenSSH "VMs" in network namespaces (see netns.py)."""
