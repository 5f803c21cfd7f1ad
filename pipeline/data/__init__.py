"""Datasets: sources (folder, zip, parquet, the Hub), audio checks, transcripts, the manifest, speakers, VQ codes."""
