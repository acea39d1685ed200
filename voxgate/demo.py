"""`voxgate demo`: the whole gateway working, with no keys and no network.

A newcomer should see every path work before writing a line of code. The demo starts both
simulated upstreams in this process (loopback, random ports, throwaway keys), starts the real
gateway as a child process pointed at them, and plays a scripted conversation through each
path, printing what the client sent and received with timings. Exit status 0 means every
path worked. With `--keep-running` everything stays up afterwards so a real client can be
pointed at the printed URLs, until Ctrl-C or SIGTERM. The script each path plays is in
`demo_script.py`; this module starts everything, runs it and reports.
"""

from __future__ import annotations

import secrets
import signal
from dataclasses import dataclass

import click
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    open_websocket_url,
)

from voxgate.demo_script import STEPS, Conversation, Printer, Step, StepFailed, as_ms, shorten
from voxgate.launcher import GatewayProcess, LaunchError, clean_env, start_gateway_async

__all__ = ["STEPS", "demo", "run_demo"]

STEP_TIMEOUT = 10.0  # seconds for one whole path, connect to close
CONNECT_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0
START_TIMEOUT = 30.0
GATEWAY_GRACE = "2"  # the demo's sessions are short; do not make Ctrl-C wait 30 s

async def run_step(gw: GatewayProcess, step: Step, index: int, printer: Printer) -> bool:
    """Play one path; prints its transcript and one result line; never raises (but Cancelled)."""
    total = len(STEPS)
    url = gw.url(step.path + step.query)
    printer.detail("")
    printer.detail(f"-- {index}/{total} {step.name}: {gw.url(step.path)}")
    started = trio.current_time()
    conv: Conversation | None = None
    error: str | None = None
    try:
        with trio.fail_after(STEP_TIMEOUT):
            async with open_websocket_url(
                url, connect_timeout=CONNECT_TIMEOUT, disconnect_timeout=CLOSE_TIMEOUT
            ) as ws:
                async with trio.open_nursery() as nursery:
                    conv = Conversation(ws, step.path, printer, step.describe, nursery, started=started)
                    await step.play(conv)
                    nursery.cancel_scope.cancel()
    except trio.TooSlowError:
        waiting = f" waiting for {conv.waiting_for}" if conv and conv.waiting_for else ""
        error = f"timed out after {STEP_TIMEOUT:g} s{waiting}"
    except StepFailed as exc:
        error = str(exc)
    except ConnectionRejected as exc:
        body = (exc.body or b"")[:200].decode("utf-8", "replace")
        error = f"the gateway refused the upgrade: HTTP {exc.status_code} {shorten(body, 120)}"
    except HandshakeError as exc:
        error = f"WebSocket handshake failed: {type(exc).__name__}"
    except ConnectionClosed as exc:
        reason = exc.reason
        waiting = f" while waiting for {conv.waiting_for}" if conv and conv.waiting_for else ""
        error = f"connection closed ({reason.code} {reason.reason or ''}){waiting}".replace(" )", ")")
    except OSError as exc:
        error = f"cannot connect: {exc.strerror or exc}"
    elapsed = trio.current_time() - started
    if conv is not None:
        conv.flush_audio()
    if error is None:
        printer.always(f"ok    {index}/{total} {step.name:<26} {step.path:<26} {as_ms(elapsed)}")
        return True
    printer.always(f"FAIL  {index}/{total} {step.name:<26} {step.path:<26} {error}")
    return False


# ---------------------------------------------------------------------------------------
# Orchestration


@dataclass
class DemoOptions:
    port: int = 0
    keep_running: bool = False
    quiet: bool = False


def _url_lines(gw: GatewayProcess) -> list[str]:
    rows = [
        (gw.url("/", "http"), "browser page: talk through /openai, /deepgram-proxy, /deepgram-proxy/v1/listen"),
        (gw.url("/openai"), "Deepgram Voice Agent protocol -> OpenAI Realtime (simulated)"),
        (gw.url("/openai/v1/realtime"), "raw OpenAI Realtime relay (simulated)"),
        (gw.url("/deepgram-proxy"), "Deepgram Voice Agent passthrough (simulated)"),
        (gw.url("/deepgram-proxy/v1/listen"), "Deepgram live transcription (simulated)"),
        (gw.url("/deepgram-proxy/v1/speak"), "Deepgram streaming TTS (simulated)"),
        (gw.url("/deepgram-proxy/v2/listen"), "Deepgram Flux turn-based transcription (simulated)"),
        (gw.url("/deepgram-proxy/v2/speak"), "Deepgram Flux turn-based TTS (simulated)"),
        (gw.url("/readyz", "http"), "readiness; /healthz liveness; /metrics Prometheus"),
    ]
    width = max(len(url) for url, _ in rows)
    return [f"  {url:<{width}}  {label}" for url, label in rows]


async def run_demo(options: DemoOptions, printer: Printer) -> int:
    """Start simulators and gateway, play every path, stop everything; returns the exit code."""
    from voxgate.simulate.deepgram.server import DeepgramSimulator
    from voxgate.simulate.openai.server import OpenAISimulator

    # Throwaway keys: the simulators check them and the gateway injects them, exactly as
    # with the real services, but they are worthless anywhere else.
    openai_key = "sk-demo-" + secrets.token_hex(16)
    deepgram_key = "demo-" + secrets.token_hex(24)
    results: list[bool] = []
    finished = False
    interrupted: str | None = None

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                nonlocal interrupted
                async for signum in signals:
                    interrupted = signal.Signals(signum).name
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_signals)
            openai_sim = OpenAISimulator(api_key=openai_key)
            deepgram_sim = DeepgramSimulator(api_key=deepgram_key)
            openai_port = await nursery.start(openai_sim.serve)
            deepgram_port = await nursery.start(deepgram_sim.serve)
            printer.detail(f"demo: simulated OpenAI Realtime on ws://127.0.0.1:{openai_port}")
            printer.detail(f"demo: simulated Deepgram on ws://127.0.0.1:{deepgram_port}")
            env = clean_env(
                {
                    "OPENAI_API_KEY": openai_key,
                    "OPENAI_REALTIME_URL": f"ws://127.0.0.1:{openai_port}/v1/realtime",
                    "DEEPGRAM_API_KEY": deepgram_key,
                    "DEEPGRAM_AGENT_URL": f"ws://127.0.0.1:{deepgram_port}",
                    "DEEPGRAM_API_URL": f"ws://127.0.0.1:{deepgram_port}",
                    "VOXGATE_GRACE": GATEWAY_GRACE,
                    "VOXGATE_DEMO_PAGE": "1",
                }
            )
            gw: GatewayProcess | None = None
            try:
                try:
                    gw = await start_gateway_async(env, port=options.port, timeout=START_TIMEOUT)
                except LaunchError as exc:
                    printer.always(f"demo: the gateway did not start: {_launch_summary(exc)}")
                    nursery.cancel_scope.cancel()
                    return 1
                printer.detail(f"demo: gateway pid {gw.pid} listening on {gw.url('', 'http')}")
                printer.detail(f"demo: browser page {gw.url('/', 'http')}" + ("" if options.keep_running else " (with --keep-running it stays up)"))
                for index, step in enumerate(STEPS, 1):
                    results.append(await run_step(gw, step, index, printer))
                finished = True
                failed = results.count(False)
                printer.always("")
                if failed:
                    _print_gateway_tail(gw, printer)
                    printer.always(f"demo: {failed} of {len(STEPS)} paths failed")
                else:
                    printer.always(f"demo: all {len(STEPS)} paths worked")
                if options.keep_running:
                    printer.always("demo: gateway and simulators keep running; point a client at:")
                    for line in _url_lines(gw):
                        printer.always(line)
                    printer.always("demo: press Ctrl-C to stop")
                    await trio.sleep_forever()
                nursery.cancel_scope.cancel()
            finally:
                if gw is not None:
                    await gw.stop_async()

    if not finished:
        printer.always(f"demo: interrupted ({interrupted or 'cancelled'}) after {len(results)} of {len(STEPS)} paths")
        return 1
    if interrupted and options.keep_running:
        printer.always(f"demo: stopped ({interrupted})")
    return 0 if all(results) else 1


def _launch_summary(exc: LaunchError) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["unknown"])[-1]


def _print_gateway_tail(gw: GatewayProcess, printer: Printer, n: int = 15) -> None:
    lines = [line.rstrip() for line in gw.output.splitlines() if line.strip()]
    if lines and not printer.quiet:
        printer.always(f"demo: last {min(n, len(lines))} lines of gateway output:")
        for line in lines[-n:]:
            printer.always(f"  | {line}")


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Gateway port (0 = any free port).")
@click.option("--keep-running", is_flag=True,
              help="Leave the gateway and simulators up after the script, until Ctrl-C / SIGTERM.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the per-path results and the summary.")
def demo(port: int, keep_running: bool, quiet: bool) -> None:
    """Run the gateway against built-in simulators and play a conversation through every
    path (no keys, no network). Exit 0 when every path worked."""
    code = trio.run(run_demo, DemoOptions(port=port, keep_running=keep_running, quiet=quiet), Printer(quiet))
    raise click.exceptions.Exit(code)


if __name__ == "__main__":
    demo()
