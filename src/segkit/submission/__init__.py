"""Submission files: building and validating them against the sample submission."""
