"""datagen: hierarchical long-context instruction data (He et al. 2025). Imports no JAX."""
