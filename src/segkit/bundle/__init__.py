"""The offline bundle: what it holds and the inference script that runs it in a notebook."""
