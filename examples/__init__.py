"""Example programs built on the Stagecast SDK (run them; they are not a library)."""
