"""Registered model params (no logic): key = module below params + class."""
