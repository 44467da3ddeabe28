"""Images: fetch, verify and store every product and scene image the pairs name."""
