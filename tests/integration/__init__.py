"""Integration tests: real local Ray, S3 on loopback, real model weights, chaos."""
