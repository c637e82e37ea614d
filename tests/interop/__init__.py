"""Interop tests over 127.0.0.1 with clients and servers someone else wrote."""
