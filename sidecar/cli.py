"""The `metering-sidecar` command line. Each subcommand lives in its own module; this one only parses."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from sidecar import __version__


def _emulator_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "emulator",
        help="run a local AWS Marketplace Metering Service emulator (no AWS account needed)",
        description=(
            "A local AWS Marketplace Metering Service: RegisterUsage, MeterUsage, BatchMeterUsage and "
            "ResolveCustomer over the real AWS JSON 1.1 protocol with SigV4. Point boto3 or the AWS CLI at it "
            "with AWS_ENDPOINT_URL_MARKETPLACE_METERING. Control and inspection live under /_emulator/."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument(
        "--port", type=int, default=8790, help="port to listen on; 0 picks a free one (default: %(default)s)"
    )
    p.add_argument(
        "--region",
        help="the Region this endpoint serves; other Regions get InvalidRegion (default: us-east-1)",
    )
    p.add_argument("--product-code", help="the product code it knows (default: demo-product-code)")
    p.add_argument(
        "--dimension",
        action="append",
        default=[],
        metavar="NAME",
        help="a custom dimension of the product; repeat for several",
    )
    p.add_argument(
        "--public-key-out",
        type=Path,
        metavar="FILE",
        help="write the PS256 public key (PEM) here once the server listens",
    )
    p.add_argument(
        "--private-key",
        type=Path,
        metavar="FILE",
        help="sign RegisterUsage tokens with this RSA private key (PEM) instead of a fresh one",
    )
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="JSON start-up config (see sidecar/emulator/config.py)"
    )
    p.add_argument("--not-entitled", action="store_true", help="start with the customer not entitled")
    p.add_argument(
        "--rate-limits",
        action="store_true",
        help="enforce AWS's per-account quotas (RegisterUsage 5/s, MeterUsage 10/s) with ThrottlingException",
    )
    p.add_argument(
        "--strict-auth",
        action="store_true",
        help="refuse access keys whose secret the emulator does not know (UnrecognizedClientException)",
    )
    p.add_argument(
        "--credentials",
        action="append",
        default=[],
        metavar="AKID:SECRET",
        help="a static key pair whose signatures are verified in full; repeat for several",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="OP:KIND[:k=v,...]",
        help="inject a fault, e.g. MeterUsage:throttle:count=3 or '*:error500:rate=0.5'",
    )
    p.add_argument("--clock", metavar="TIME", help="start the clock at this time (ISO 8601 or epoch seconds)")
    p.add_argument(
        "--frozen-clock",
        action="store_true",
        help="the clock moves only when told to (POST /_emulator/clock)",
    )
    p.add_argument(
        "--dry-run-response",
        choices=("ok", "error"),
        help="how a permitted DryRun MeterUsage answers: 200 (ok, default) or a DryRunOperation error",
    )
    p.set_defaults(func=_run_emulator)


def _run_emulator(args: argparse.Namespace) -> int:
    from sidecar.emulator.config import EmulatorOptions, build
    from sidecar.emulator.server import CREDENTIALS_PATH, EmulatorServer

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        emulator = build(
            EmulatorOptions(
                region=args.region,
                product_code=args.product_code,
                dimensions=args.dimension,
                private_key=args.private_key,
                config=args.config,
                not_entitled=args.not_entitled,
                rate_limits=args.rate_limits,
                strict_auth=args.strict_auth,
                faults=args.fault,
                credentials=args.credentials,
                clock=args.clock,
                frozen_clock=args.frozen_clock,
                dry_run_response=args.dry_run_response,
            )
        )
        server = EmulatorServer(emulator, args.host, args.port)
    except (ValueError, OSError) as err:
        print(f"metering-sidecar emulator: {err}", file=sys.stderr)
        return 2
    settings = emulator.state.settings
    if args.public_key_out:
        args.public_key_out.write_text(emulator.state.signer.public_pem())
    products = "; ".join(
        f"{code} [{', '.join(d) or 'hourly, no dimensions'}]" for code, d in settings.products.items()
    )
    print(f"metering emulator listening on {server.url} (region {settings.region}; products: {products})")
    print("Point a client at it:")
    print(f"  export AWS_ENDPOINT_URL_MARKETPLACE_METERING={server.url}")
    print(f"  export AWS_REGION={settings.region} AWS_DEFAULT_REGION={settings.region}")
    print(f"  export AWS_CONTAINER_CREDENTIALS_FULL_URI={server.url}{CREDENTIALS_PATH}")
    print("  export AWS_CONTAINER_AUTHORIZATION_TOKEN=pod-1   # any token; one token is one pod")
    print(
        "  (static AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY work too"
        + (")" if settings.strict_auth else "; unknown keys are accepted, --strict-auth refuses them)")
    )
    if args.public_key_out:
        print(f"Public key (PEM) written to {args.public_key_out}")
    sys.stdout.flush()
    return _serve_until_signal(server)


def _serve_until_signal(server: object) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()  # type: ignore[attr-defined]
    stop.wait()
    server.stop()  # type: ignore[attr-defined]
    return 0


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from sidecar.config import VARIABLES, flag_for

    p = sub.add_parser(
        "run",
        help="run the sidecar: entitlement at start, hourly MeterUsage, and the localhost API",
        description=(
            "Run the sidecar next to the product. It calls RegisterUsage with the pod's own role (boto3's "
            "default chain: IRSA on EKS, the task role on ECS), verifies the signed token, serves the "
            "localhost API, and, for custom dimensions, stores reported usage durably and sends one "
            "MeterUsage per dimension per hour. Every setting is an environment variable; a flag overrides it."
        ),
        epilog="AWS settings are boto3's own: AWS_REGION (or AWS_DEFAULT_REGION, or the ECS task metadata), "
        "AWS_ENDPOINT_URL_MARKETPLACE_METERING, AWS_ENDPOINT_URL_STS.",
    )
    for variable, text in VARIABLES:
        if variable == "METERING_ALLOW_NON_LOOPBACK":
            p.add_argument(
                flag_for(variable),
                dest=variable,
                action="store_const",
                const="true",
                help=f"{text} [{variable}]",
            )
        else:
            p.add_argument(flag_for(variable), dest=variable, metavar="VALUE", help=f"{text} [{variable}]")
    p.set_defaults(func=_run_sidecar, variables=[v for v, _ in VARIABLES])


def _run_sidecar(args: argparse.Namespace) -> int:
    import os

    from sidecar.run import run

    env = dict(os.environ)
    for variable in args.variables:
        value = getattr(args, variable)
        if value is not None:
            env[variable] = value
    return run(env)


def _verify_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify-token",
        help="check a RegisterUsage token against a public key, and say which check fails",
        description="Verify a RegisterUsage Signature (a PS256 JWT) the way the sidecar does, for debugging "
        "an integration. Exit status 0 if it verifies, 1 if a check fails, 2 on bad input.",
    )
    p.add_argument("token", help="the token, or - to read it from standard input")
    p.add_argument(
        "--public-key", type=Path, required=True, metavar="FILE", help="the AWS Marketplace public key (PEM)"
    )
    p.add_argument("--product-code", required=True, help="the ProductCode sent to RegisterUsage")
    p.add_argument("--nonce", help="the Nonce sent to RegisterUsage (omit if none was sent)")
    p.add_argument("--public-key-version", type=int, default=1, help="the PublicKeyVersion sent (default: 1)")
    p.set_defaults(func=_verify_token)


def _verify_token(args: argparse.Namespace) -> int:
    import json

    from sidecar.token import TokenError, load_public_key, verify_token

    token = sys.stdin.read().strip() if args.token == "-" else args.token.strip()  # noqa: S105
    try:
        key = load_public_key(args.public_key.read_bytes())
    except OSError as err:
        print(f"--public-key {args.public_key}: cannot read it ({err.strerror})", file=sys.stderr)
        return 2
    except TokenError as err:
        print(f"--public-key {args.public_key}: refused: {err.message}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"--public-key {args.public_key}: {err}", file=sys.stderr)
        return 2
    try:
        claims = verify_token(
            token,
            {args.public_key_version: key},
            product_code=args.product_code,
            public_key_version=args.public_key_version,
            nonce=args.nonce,
        )
    except TokenError as err:
        print(f"token refused: check '{err.check}' failed: {err.message}")
        return 1
    print("token verified: alg PS256, signature, productCode, publicKeyVersion and nonce all check out")
    print(json.dumps(claims.raw, indent=2, sort_keys=True))
    return 0


def _demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the emulator, the sidecar and a simulated product together, and show what happened",
        description="Starts the Metering emulator, the sidecar (a real process, pointed at the emulator) and "
        "a small simulated product; the product waits until the sidecar is entitled and verifies the signed "
        "token itself. Then everything shuts down and the demo prints what each part did. No AWS account "
        "is needed; nothing leaves 127.0.0.1.",
    )
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from sidecar.demo import demo

    return demo()


def _wait_ready_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "wait-ready",
        help="wait until the sidecar's /readyz answers 200 (for a product started next to it)",
        description="Poll the sidecar's /readyz until it answers 200, for products that start before the "
        "sidecar is entitled (plain-container mode on Kubernetes older than 1.29, or ECS without dependsOn). "
        "Exit status 0 once ready; 1 if denied or the timeout passes, with the reason.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8787", help="the sidecar's API (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait (default: %(default)s)")
    p.set_defaults(func=_wait_ready)


def _wait_ready(args: argparse.Namespace) -> int:
    import time

    from sidecar.client import SidecarClient

    client = SidecarClient(args.url, timeout=5.0)
    deadline = time.monotonic() + args.timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            if client.ready():
                print(f"ready: {args.url}/readyz answered 200")
                return 0
            state = client.entitlement()
            last = f"entitlement is {state.get('status')}" + (
                f": {state['reason']}" if state.get("reason") else ""
            )
            if state.get("status") == "denied":
                print(f"not ready: {last}", file=sys.stderr)
                return 1
        except Exception as err:  # the sidecar is not up yet: keep waiting
            last = f"{type(err).__name__}: {err}"
        time.sleep(0.5)
    print(f"not ready after {args.timeout:g} s: {last}", file=sys.stderr)
    return 1


def _inject_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inject",
        help="add the sidecar to Kubernetes manifests (stdin or -f, to stdout), like `linkerd inject`",
        description="Reads multi-document YAML and writes it to stdout with the metering sidecar added to every "
        "Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob and Pod. Idempotent: a pod that already "
        "has the sidecar is left alone. A workload or pod template annotated "
        'metering-sidecar.io/inject: "false" is skipped. Other documents are copied as they are. '
        "What was done goes to stderr.",
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="a manifest file; repeat for several (default: standard input)",
    )
    p.add_argument("--product-code", required=True, help="your AWS Marketplace product code")
    p.add_argument(
        "--dimensions", default="", help="comma-separated custom dimensions (default: none, hourly)"
    )
    p.add_argument("--public-key-version", type=int, default=1, help="default: %(default)s")
    p.add_argument(
        "--public-key-configmap",
        default="metering-sidecar-public-key",
        help="the ConfigMap holding public-key.pem (default: %(default)s)",
    )
    p.add_argument(
        "--image", default="metering-sidecar:0.1.0", help="the sidecar image (default: %(default)s)"
    )
    p.add_argument(
        "--mode",
        choices=("native", "plain"),
        default="native",
        help="native: an init container with restartPolicy Always (Kubernetes 1.29+, default); "
        "plain: a regular container, for older clusters",
    )
    p.add_argument("--api-token-secret", help="a Secret whose key 'token' becomes METERING_API_TOKEN")
    p.add_argument("--service-account", help="set the pod's serviceAccountName (the one with the IRSA role)")
    p.set_defaults(func=_inject)


def _inject(args: argparse.Namespace) -> int:
    try:
        import yaml

        from sidecar.inject import InjectOptions, inject_stream
    except ImportError as err:
        print(
            f"metering-sidecar inject needs the kubernetes client and PyYAML ({err.name} is missing): "
            "pip install 'metering-sidecar[inject]'. The sidecar image leaves them out on purpose.",
            file=sys.stderr,
        )
        return 2
    from sidecar.config import PRODUCT_CODE_RE

    if not PRODUCT_CODE_RE.match(args.product_code):
        print(
            f"--product-code {args.product_code!r}: 1-255 characters of a-z A-Z 0-9 - / = : _ . @",
            file=sys.stderr,
        )
        return 2
    options = InjectOptions(
        product_code=args.product_code,
        dimensions=tuple(d.strip() for d in args.dimensions.split(",") if d.strip()),
        public_key_version=args.public_key_version,
        public_key_configmap=args.public_key_configmap,
        image=args.image,
        mode=args.mode,
        api_token_secret=args.api_token_secret,
        service_account=args.service_account,
    )
    sources = [(str(f), f) for f in args.filename] or [("<stdin>", None)]
    outputs = []
    for label, path in sources:
        try:
            text = path.read_text() if path is not None else sys.stdin.read()
        except OSError as err:
            print(f"{label}: cannot read it ({err.strerror})", file=sys.stderr)
            return 2
        try:
            output, report = inject_stream(text, options)
        except yaml.YAMLError as err:
            print(f"{label}: not valid YAML: {err}", file=sys.stderr)
            return 2
        for name, what in report:
            print(f"{label}: {name}: {what}", file=sys.stderr)
        outputs.append(output)
    sys.stdout.write("".join(outputs))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metering-sidecar",
        description="AWS Marketplace metering for paid container products, as a sidecar.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _run_parser(sub)
    _emulator_parser(sub)
    _verify_parser(sub)
    _demo_parser(sub)
    _wait_ready_parser(sub)
    _inject_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
