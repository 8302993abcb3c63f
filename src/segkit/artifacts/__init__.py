"""An experiment's files: where they live, when they are fresh, how they are written."""
