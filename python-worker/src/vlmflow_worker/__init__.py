"""vlmflow's data plane: a gRPC worker for VLM inference, dataset prep, training, evaluation and export."""

__version__ = "0.1.0"
