"""
The application: C{twistd mailframe} (C{tap}: its options and the service
it builds), its settings and config file (C{config}), the TLS and AUTH
parts of its listeners (C{security}), worker processes (C{workers}), and
the console scripts (C{queuetool}, C{dkimtool}).

This is the top of the import graph: nothing in mailframe imports it.
"""
