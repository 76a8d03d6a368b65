"""ndingest: the ndstore ingest tutorial as a resumable, verified Luigi pipeline."""
__version__ = "0.1.0"
