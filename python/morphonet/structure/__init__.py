"""Structure Net: networks that start minimal and grow where activation extrema point."""
