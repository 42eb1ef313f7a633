#!/usr/bin/env python3
"""Typing-session benchmark for `gpt2 serve` (figures, never pass/fail).

A real text (typing_text.txt) is typed a few characters at a time after a
first part that is already in the buffer; at each pause one `complete`
(3 suggestions x 24 tokens, stop at the end of the line, buffer 1) goes to the
helper and the next keystrokes wait for its reply, as a user who pauses would.
Requests go as the plugin sends them: notifications with an id, partial
results streamed every 2 decode steps, the final as an event.
Reported: p50/p95 latency of the final as the client sees it; of the first
event (first text: when the plugin can first draw ghost text); and the share
of prompt tokens whose keys/values were reused — with prefix reuse on, and
off (--cache-slots 0). --busy N runs N busy loops (other programs keeping
CPUs busy) beside the helper for the whole session.

usage: typing_session.py MODEL_DIR [--pauses N] [--threads N] [--cpu-dtype F ...] [--no-off]
                         [--cpu-kv auto|fp32|fp16|int8] [--busy N]
"""
import argparse
import os
import select
import statistics
import subprocess
import sys
import time

import msgpack

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPT2 = os.environ.get("GPT2_BIN", os.path.join(ROOT, "build", "gpt2"))


class Helper:
    """One `gpt2 serve` driven by requests (replies [1, id, err, result]; notifications, such as
    partial results, are skipped). stderr: a file to keep the helper's log in (for the error
    raised when it exits), else the log goes to ours."""

    def __init__(self, model, extra, stderr=None):
        self.err = stderr
        self.p = subprocess.Popen([GPT2, "serve", "--model", model, "--log-level", "warn"] + extra,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        self.unp = msgpack.Unpacker(raw=False)
        self.msgid = 0

    def stderr_tail(self):
        if not self.err:
            return "(its log went to stderr)"
        self.err.seek(0)
        return self.err.read().decode(errors="replace").strip()[-600:]

    def call(self, method, params, timeout=120):
        """The result; raises on an error reply, a timeout or the helper's exit."""
        self.msgid += 1
        self.p.stdin.write(msgpack.packb([0, self.msgid, method, [params]]))
        self.p.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.unp:
                if msg[0] == 1 and msg[1] == self.msgid:
                    if msg[2]:
                        raise RuntimeError(f"{method}: {msg[2]}")
                    return msg[3]
            self.read_more(deadline, f"{method}: no reply in {timeout} s")

    def read_more(self, deadline, late):
        """What the helper has written next into the unpacker, by deadline (time.monotonic())
        or TimeoutError(late); EOFError when it exited."""
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.p.stdout], [], [], left)[0]:
            raise TimeoutError(late)
        data = os.read(self.p.stdout.fileno(), 1 << 16)
        if not data:
            raise EOFError(f"the helper exited ({self.p.wait()}): {self.stderr_tail()}")
        self.unp.feed(data)

    def complete_streamed(self, params, timeout=120):
        """A `complete` as the plugin sends it: a notification with an id, partial results
        streamed every 2 steps (its partial_every), the final as an event. Returns the final
        event and the seconds until the first event (partial or final): when the plugin can
        first draw ghost text."""
        self.msgid += 1
        cid = self.msgid
        params = dict(params, id=cid, stream=True, partial_every=2)
        t0 = time.monotonic()
        self.p.stdin.write(msgpack.packb([2, "complete", [params]]))
        self.p.stdin.flush()
        first = None
        deadline = t0 + timeout
        while True:
            for msg in self.unp:
                if msg[0] != 2 or msg[1] != "nvim_exec_lua":
                    continue
                ev = msg[2][1][0]
                if ev.get("id") != cid:
                    continue
                if first is None:
                    first = time.monotonic() - t0
                if ev["kind"] == "error":
                    raise RuntimeError(f"complete: {ev['error']}")
                if ev["kind"] == "final":
                    return ev, first
            self.read_more(deadline, f"complete: no final event in {timeout} s")

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()
            self.p.wait()


def session(model, pauses, extra):
    text = open(os.path.join(os.path.dirname(__file__), "typing_text.txt")).read()
    start = len(text) * 2 // 3
    stride = max(1, (len(text) - start) // pauses)
    h = Helper(model, extra)
    h.call("complete", {"text": text[:start], "buffer": 1, "seed": 1})  # warm up: load, first prefill
    lat, first, cached, prompt, pre, dec = [], [], 0, 0, [], []
    for i in range(pauses):
        end = start + (i + 1) * stride
        t0 = time.perf_counter()
        r, t_first = h.complete_streamed({"text": text[:end], "buffer": 1, "seed": 1000 + i, "n": 3,
                                          "max_tokens": 24, "stop": "line"})
        lat.append((time.perf_counter() - t0) * 1000)
        first.append(t_first * 1000)
        cached += r["cached_tokens"]
        prompt += r["prompt_tokens"]
        pre.append(r["timings"]["prefill_ms"])
        dec.append(r["timings"]["decode_ms"])
    models = h.call("status", {}).get("models", [])
    head = (sum(m.get("head_screened_rows", 0) for m in models),
            sum(m.get("head_fallback_rows", 0) for m in models),
            sum(m.get("cpu_thread_cuts", 0) for m in models))
    h.close()
    med = statistics.median
    return (med(lat), p95(lat), med(first), p95(first), cached / max(prompt, 1), prompt / pauses,
            med(pre), med(dec), head)


def p95(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--pauses", type=int, default=30)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--cpu-dtype", nargs="+", default=["fp32"])
    ap.add_argument("--no-off", action="store_true", help="skip the run without prefix reuse")
    ap.add_argument("--cpu-kv", help="the helper's --cpu-kv (default: its auto)")
    ap.add_argument("--busy", type=int, default=0, help="busy loops beside the helper")
    a = ap.parse_args()
    extra = ["--threads", str(a.threads)] if a.threads else []
    extra += ["--cpu-kv", a.cpu_kv] if a.cpu_kv else []
    print(f"typing session: {a.pauses} pauses, 3 x 24 tokens, stop=line, "
          f"model {os.path.basename(a.model)}, through `gpt2 serve` (p50/p95 as the client sees them)"
          + (f"; GPT2_CPU_ISA={os.environ['GPT2_CPU_ISA']}" if os.environ.get("GPT2_CPU_ISA") else "")
          + (f"; {a.busy} busy loop(s) beside it" if a.busy else "")
          + (f"; GPT2_CPU_ADAPT={os.environ['GPT2_CPU_ADAPT']}" if os.environ.get("GPT2_CPU_ADAPT") else ""))
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.busy)]
    try:
        sessions(a, extra)
    finally:
        for p in busy:
            p.kill()
            p.wait()


def sessions(a, extra):
    for dtype in a.cpu_dtype:
        runs = [("prefix reuse on ", [])]
        if not a.no_off:
            runs.append(("prefix reuse off", ["--cache-slots", "0"]))
        for label, more in runs:
            p50, p95_, f50, f95, ratio, avg_prompt, pre, dec, head = session(
                a.model, a.pauses, extra + more + ["--cpu-dtype", dtype, "--device", "cpu"])
            print(f"  {dtype:4s} {label}: p50 {p50:7.1f} ms  p95 {p95_:7.1f} ms  first text p50 "
                  f"{f50:6.1f} ms  p95 {f95:6.1f} ms  cached tokens "
                  f"{ratio * 100:5.1f}% (avg prompt {avg_prompt:.0f} tokens); helper's medians: "
                  f"prefill {pre:.1f} ms, decode {dec:.1f} ms; head rows screened {head[0]}, "
                  f"whole {head[1]}" + (f"; thread cuts {head[2]}" if head[2] else ""))


if __name__ == "__main__":
    main()
