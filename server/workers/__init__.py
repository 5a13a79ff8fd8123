"""``warpserve serve --workers N``: a supervisor and N server processes on the same ports."""
