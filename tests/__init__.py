"""mailframe's tests (twisted.trial)."""
