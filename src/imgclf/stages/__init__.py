"""One module per DVC stage: ingest, preprocess, train, evaluate, export."""
