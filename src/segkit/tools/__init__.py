"""Commands outside the pipeline that read files and write nothing of an experiment's."""
