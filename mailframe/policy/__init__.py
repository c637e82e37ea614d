"""
Security policies that plug into the server: connection filters and the
state they share across sessions (failed-authentication limits, ...).
"""
