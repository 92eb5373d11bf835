"""Data: synthetic faces, readers for real layouts, Ray Data preprocessing into the Parquet cache."""
