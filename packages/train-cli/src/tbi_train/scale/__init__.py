"""Scale-out: memory planning (and, later, launchers and engine configs)."""
