"""Two `aiopt optimize` workers on one PostgreSQL study, as docs/optimize-distributed.md reports:

    . scripts/postgres-for-tests.sh      # or any server: AIOPT_STORAGE=postgresql://... (and AIOPT_TEST_POSTGRES_CTL for --outage)
    python benchmarks/optimize_distributed.py MODEL.onnx OUT --kill          # B killed mid-trial (SIGKILL), started again
    python benchmarks/optimize_distributed.py MODEL.onnx OUT --outage 40     # the server stopped 40 s during the trials

Worker A gets the URL on its command line, worker B from AIOPT_STORAGE. Prints what each worker
ended with, both reports' best and front, the chains measured, the lost trials, whether any file
under OUT holds the password, the elapsed time and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill", action="store_true", help="SIGKILL worker B during its first trial, start it again 5 s later")
    parser.add_argument("--outage", type=float, default=0, help="stop the server this many seconds once a trial is finished")
    parser.add_argument("--trials", default="7")
    parser.add_argument("--heartbeat", default="5")
    args = parser.parse_args()
    url = os.environ.get("AIOPT_STORAGE") or os.environ["AIOPT_TEST_POSTGRES_URL"]
    study = f"bench-{uuid.uuid4().hex[:6]}"
    flags = ["--study", study, "--trials", args.trials, "--heartbeat", args.heartbeat, "--max-accuracy-drop", "0.02", "-b", "1", "-b", "32",
             "--min-time", "0.2", "--json"]
    args.out.mkdir(parents=True, exist_ok=True)

    def worker(name: str, via_env: bool) -> subprocess.Popen:
        with open(args.out / f"{name}.out", "w") as out, open(args.out / f"{name}.err", "w") as err:
            env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
            env.pop("AIOPT_STORAGE", None)
            if via_env:
                env["AIOPT_STORAGE"] = url
            storage = [] if via_env else ["--storage", url]
            return subprocess.Popen([sys.executable, "-m", "aiopt", "optimize", args.model, "-o", str(args.out / name), *storage, *flags],
                                    stdout=out, stderr=err, env=env)

    def trials() -> list:
        import optuna

        from aiopt.optimize.storage import resolve_url

        try:
            return optuna.load_study(study_name=study, storage=resolve_url(url)).get_trials(deepcopy=False)
        except KeyError:
            return []

    def wait_for(predicate):
        while not (found := predicate()):
            time.sleep(0.3)
        return found

    start = time.monotonic()
    say = lambda text: print(f"{time.monotonic() - start:5.0f}s {text}; load {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    say(f"study {study}")
    workers = {"a": worker("a", False), "b": worker("b", True)}
    if args.kill:
        pid = workers["b"].pid
        killed = wait_for(lambda: [t for t in trials() if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{pid}")])[0]
        time.sleep(1.0)
        workers["b"].send_signal(signal.SIGKILL)
        workers["b"].wait()
        say(f"killed worker B (pid {pid}) in trial {killed.number} ({killed.user_attrs.get('chain')})")
        time.sleep(5)
        del workers["b"]
        workers["b2"] = worker("b2", True)
        say("started B again")
    if args.outage:
        ctl = shlex.split(os.environ["AIOPT_TEST_POSTGRES_CTL"])
        wait_for(lambda: any(t.state.name == "COMPLETE" for t in trials()) and any(t.state.name == "RUNNING" for t in trials()))
        running = [(t.number, t.user_attrs.get("chain")) for t in trials() if t.state.name == "RUNNING"]
        subprocess.run([*ctl, "-m", "fast", "-w", "stop"], check=True, capture_output=True)
        say(f"server stopped; running: {running}")
        time.sleep(args.outage)
        subprocess.run([*ctl, "-w", "start"], check=True, capture_output=True)
        say("server started again")
    for name, process in workers.items():
        process.wait()
        say(f"worker {name} exit {process.returncode}")
    for name in workers:
        err = (args.out / f"{name}.err").read_text()
        print(name, "storage lines:", [line for line in err.splitlines() if line.startswith(("storage ", "error:"))], "traceback:", "Traceback" in err)
        text = (args.out / f"{name}.out").read_text()
        if text.strip():
            document = json.loads(text)
            best = document["best"]
            print(name, "best", best and (best["trial"], best["chain"], best["speedup"]), "front", document["front"],
                  "trials", document["study"]["trials"], "lost", document["study"]["lost"])
    measured = sorted(t.user_attrs.get("chain", "") for t in trials() if t.state.name in ("COMPLETE", "PRUNED") and "duplicate_of" not in t.user_attrs)
    print(f"chains measured: {len(measured)} ({len(set(measured))} distinct): {measured}")
    from aiopt.optimize.storage import password_of

    secret = password_of(url)
    needles = [s.encode() for s in {secret, secret.replace("@", "%40")}] if secret else []
    print("files holding the password:", [str(p) for p in args.out.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)])
    say("done")


if __name__ == "__main__":
    main()
