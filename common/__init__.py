"""Helpers every raylars package may import (and that import no raylars package):
config validation (`require`), name -> schema/builder registries, and repository paths."""
