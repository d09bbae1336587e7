"""Reading volumes and labels from files and writing masks on the input's exact grid (uses the engine's ``Volume``)."""
