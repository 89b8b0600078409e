"""Numbers computed from files, without torch: sharpness numbers, file summaries."""
