"""The pipeline's stages, one module (or package) each; they talk only through artifacts."""
