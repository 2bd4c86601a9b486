"""``madkit demo RUN``: try a trained model in the browser (Gradio; ``pip install 'madkit[demo]'``)."""

from madkit.commands import add_threads_arg, apply_threads_arg


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="a local web page to generate and complete images with a trained model")
    p.add_argument("checkpoint", help="run folder (its latest checkpoint), a checkpoint folder or an export folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 serves the network)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_threads_arg(p)


def run(args) -> int:
    apply_threads_arg(args)
    from madkit.commands import UsageError
    from madkit.errors import MissingPackageError, missing_package

    if problem := missing_package("gradio", "demo", "madkit demo"):
        raise MissingPackageError(problem)
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: use a port number from 1 to 65535")
    import madkit
    from madkit.demo import launch

    pipe = madkit.load(args.checkpoint, weights="raw" if args.raw else "ema", device=args.device)
    try:
        launch(pipe, host=args.host, port=args.port)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise UsageError(f"--host {args.host} --port {args.port}: cannot serve there ({exc}); choose another --port") from None
    except KeyboardInterrupt:
        print("madkit demo: stopped")
    return 0
