"""The engine as a service (``medsam-slicer serve``): one process holds the model and the embedding cache and
serves many clients over HTTP (FastAPI + uvicorn).  See README "Local and remote engine".

Modules: :mod:`.engine` (state, sessions, jobs, limits), :mod:`.worker` (the one thread that runs the model),
:mod:`.volumes` (uploads by content fingerprint, the private hand-over folder), :mod:`.auth` (tokens, early 401/413),
:mod:`.app` (HTTP routes), :mod:`.run` (binding, the URL line, shutdown).
"""
