"""Online parsing on Ray Serve: POST an image to /parse, get its label map (faceseg serve)."""

MAX_BATCH_SIZE = 8            # requests that share one forward pass, unless --max-batch-size says otherwise
