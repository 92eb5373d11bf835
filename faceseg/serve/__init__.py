"""Online parsing on Ray Serve: POST an image to /parse, get its label map (faceseg serve)."""
