"""Storage's one owner: run-directory files (local and gs://), the GCS requests of the
workdir lease, the workdir claim."""
