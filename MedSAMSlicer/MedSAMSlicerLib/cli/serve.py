"""``medsam-slicer serve``: the engine as a long-lived HTTP service (a thin layer over :mod:`..server`)."""

from __future__ import annotations

import argparse
import logging

from ..errors import OptionError

log = logging.getLogger("MedSAMSlicerLib")
_MiB = 1 << 20


def add_parser(commands) -> argparse.ArgumentParser:
    serve = commands.add_parser("serve", help="run the engine as a service for Slicer, the CLI and the web app")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=8765, help="TCP port; 0 picks a free one (default 8765). "
                                                              "The URL is the first line printed on stdout")
    keys = serve.add_mutually_exclusive_group()
    keys.add_argument("--token-file", help="the shared token; created with a fresh random token (mode 0600) when "
                                           "missing (default ~/.config/medsam-slicer/server-PORT.token, fresh at "
                                           "each start, removed at the end; clients given the URL find it)")
    keys.add_argument("--api-key-file", help="one token per line, e.g. one per annotator")
    serve.add_argument("--model", default="litemedsam", help="model name from model_weights/manifest.json")
    serve.add_argument("--checkpoint", help="checkpoint file (default: model_weights/, then the bundled LiteMedSAM)")
    serve.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    serve.add_argument("--backend", default="auto", choices=("auto", "openvino", "onnx", "pytorch"),
                       help="network runtime (as for segment; default auto)")
    serve.add_argument("--precision", default="exact", choices=("exact", "fast"),
                       help="exact: fp32 (default); fast: bf16 encoder where the runtime offers it")
    serve.add_argument("--cache-dir", help="keep embeddings on disk here (default: $MEDSAM_SLICER_CACHE, else "
                                           "memory only)")
    serve.add_argument("--fp16-cache", action="store_true", help="store cached embeddings as float16")
    serve.add_argument("--max-sessions", type=int, default=32, help="open volume sessions at most (default 32)")
    serve.add_argument("--idle-timeout", type=float, default=1800.0,
                       help="close a session unused this many seconds (default 1800)")
    serve.add_argument("--max-upload-mb", type=float, default=512.0, help="largest request body (default 512)")
    serve.add_argument("--memory-mb", type=float, default=4096.0,
                       help="memory for embeddings (half) and volumes (half), above the model (default 4096)")
    serve.add_argument("--job-heartbeat", type=float, default=30.0,
                       help="cancel a propagation nobody polled for this many seconds (default 30)")
    scale = serve.add_argument_group("scaling out on Ray Serve (pip install 'medsam-slicer[ray]'; README: Many "
                                     "readers, many GPUs)")
    scale.add_argument("--ray", action="store_true",
                       help="serve the same API from model replicas on a Ray cluster (a local one unless "
                            "--ray-address); requests about a volume go to the replica holding it")
    scale.add_argument("--ray-address", help="join this Ray cluster (e.g. 10.0.0.5:6379, or 'auto')")
    scale.add_argument("--replicas", type=int, default=1, help="model replicas (default 1)")
    scale.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica (default 1)")
    scale.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs per replica (default 0; 1 = one each)")
    scale.add_argument("--max-ongoing", type=int, default=16,
                       help="requests one replica takes at once before Ray routes elsewhere (default 16)")
    scale.add_argument("--object-store-mb", type=float,
                       help="object store of the local Ray cluster (default: Ray's, 30%% of memory)")
    serve.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # start_local: exit with the parent
    return serve


def run_serve(args: argparse.Namespace) -> dict:
    from ..engine.cache import default_disk_dir
    from ..server.auth import (api_keys_from_file, claim_default_token_file, default_token_file,
                               release_default_token_file, token_from_file)
    from ..server.engine import ServerConfig
    from ..server.run import bind, serve

    for name in ("max_sessions", "idle_timeout", "max_upload_mb", "memory_mb", "job_heartbeat"):
        if getattr(args, name) <= 0:
            raise OptionError(f"--{name.replace('_', '-')} must be positive")
    if args.ray and (args.replicas < 1 or args.replica_cpus < 0 or args.replica_gpus < 0 or args.max_ongoing < 1):
        raise OptionError("--replicas and --max-ongoing must be at least 1, --replica-cpus/gpus not negative")
    if not args.ray and args.ray_address:
        raise OptionError("--ray-address needs --ray")
    if not 0 <= args.port <= 65535:
        raise OptionError(f"--port {args.port} must be 0..65535")
    own_token_file = None
    if args.api_key_file:
        tokens = api_keys_from_file(args.api_key_file)
    elif args.token_file:
        tokens = [token_from_file(args.token_file, create=True)]
    cache_dir = args.cache_dir or default_disk_dir()
    config = ServerConfig(model=args.model, checkpoint=args.checkpoint, device=args.device, backend=args.backend,
                          precision=args.precision,
                          cache_dir=str(cache_dir) if cache_dir else None, fp16_cache=args.fp16_cache,
                          max_sessions=args.max_sessions, idle_timeout=args.idle_timeout,
                          max_upload_bytes=int(args.max_upload_mb * _MiB), memory_bytes=int(args.memory_mb * _MiB),
                          job_heartbeat=args.job_heartbeat)
    sock = bind(args.host, args.port)  # first: the default token file is named by the port actually bound
    try:
        if not args.api_key_file and not args.token_file:
            own_token_file = default_token_file(sock.getsockname()[1])  # one per server: none overwrites another's
            tokens = [claim_default_token_file(own_token_file)]
            log.warning("token written to %s (mode 0600, removed when the server stops); clients on this machine "
                        "find it from the URL, others pass --token-file", own_token_file)
        if args.ray:
            serve_ray(config, args, tokens, sock)
        else:
            serve(config, args.host, args.port, tokens, args.parent_pid, sock=sock)
    finally:
        sock.close()
        if own_token_file is not None:
            release_default_token_file(own_token_file)
    return {}


def serve_ray(config, args: argparse.Namespace, tokens: list[str], sock) -> None:
    try:
        from ..server.ray_serve import serve_on_ray
    except ImportError as error:
        raise OptionError(f"serve --ray needs Ray Serve: pip install 'medsam-slicer[ray]' ({error})") from None
    from ..server.run import url_of

    port, url = sock.getsockname()[1], url_of(sock, args.host)
    sock.close()  # Ray's HTTP proxy binds the port itself (chosen here, so that --port 0 works too)
    serve_on_ray(config, args.host, port, tokens, args.ray_address, args.replicas, args.replica_cpus,
                 args.replica_gpus, args.max_ongoing, args.object_store_mb, args.parent_pid, url)
