"""Build and test tooling of gpipe_lingvo (Bazel helpers and checks)."""
