"""metering-sidecar: AWS Marketplace metering for paid container products."""

__version__ = "0.1.0"
