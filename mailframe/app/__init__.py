"""
The application: C{twistd mailframe} (C{tap}: its options and the service
it builds), the one settings schema (C{settings}: every setting's name,
converter, default and help, from which the command line, the config file
and the docs' reference are made; C{converters} for the settings that need
the application, C{reference} for the docs), reading the config file
(C{config}), parsing endpoint strings without a reactor (C{endpoints}), the
TLS and AUTH parts of the listeners (C{security}), worker processes
(C{workers}), finding plug-ins (C{registry}), and the console scripts
(C{queuetool}, C{dkimtool}, C{passwd}).

This is the top of the import graph: nothing in mailframe imports it.
"""
