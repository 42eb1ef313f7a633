"""scripts/fetch-weights.sh against a Hugging Face look-alike on 127.0.0.1.

The server (http.server in a thread, stopped after each test and by a timer
at the latest) serves a tiny random checkpoint written by
tests/tools/checkpoint.py under /<owner>/<repo>/resolve/<rev>/<file>.  Like
huggingface.co, it answers model.safetensors with a 302 to a "CDN" path plus
X-Linked-Size and X-Linked-ETag (the sha256), and the CDN path honours
Range requests so resuming can be tested.  GPT2_HF_ENDPOINT points the
script at it.  Needs bash and curl; only the standard library, numpy and
pytest on the Python side.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "tools"))
import checkpoint as ck  # noqa: E402

SCRIPT = ROOT / "scripts" / "fetch-weights.sh"
FILES = ("config.json", "vocab.json", "merges.txt", "model.safetensors")
SERVER_LIFETIME = 120  # seconds; the server shuts itself down after this
RUN_TIMEOUT = 90

pytestmark = pytest.mark.skipif(shutil.which("curl") is None or shutil.which("bash") is None,
                                reason="needs bash and curl")


class HubHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1"

    def log_message(self, fmt, *args):  # keep pytest output clean; record instead
        pass

    def _send_file(self, path: Path, head: bool, extra=None):
        data = path.read_bytes()
        start, status = 0, 200
        rng = self.headers.get("Range")
        st = self.server.state
        if rng and st.get("ranges", True) and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes="):-1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes" if st.get("ranges", True) else "none")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _handle(self, head: bool):
        st = self.server.state
        st["requests"].append((self.command, self.path, self.headers.get("Range")))
        parts = self.path.split("?")[0].strip("/").split("/")
        src: Path = st["src"]
        if len(parts) == 3 and parts[0] == "cdn" and parts[2] in FILES:
            return self._send_file(src / parts[2], head)
        if (len(parts) == 5 and "/".join(parts[:2]) == st["repo"] and parts[2] == "resolve"
                and parts[4] in FILES and (src / parts[4]).exists()):
            f = parts[4]
            if f == "model.safetensors":
                data = (src / f).read_bytes()
                size = st.get("linked_size", len(data))
                sha = st.get("linked_etag", hashlib.sha256(data).hexdigest())
                self.send_response(302)
                self.send_header("Location", f"/cdn/{st['nonce']}/{f}")
                self.send_header("X-Linked-Size", str(size))
                self.send_header("X-Linked-ETag", f'"{sha}"')
                self.send_header("ETag", f'"{sha}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            blob = (src / f).read_bytes()
            git_sha1 = hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()
            return self._send_file(src / f, head, {"ETag": f'"{git_sha1}"'})
        body = b"Entry not found"
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self):
        self._handle(head=False)

    def do_HEAD(self):
        self._handle(head=True)


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # curl dropping a connection (e.g. after a 416) is not a test failure;
        # keep the error for inspection instead of printing a traceback.
        self.state.setdefault("errors", []).append(repr(sys.exc_info()[1]))


@pytest.fixture
def hub(tmp_path):
    """A running fake hub serving a tiny checkpoint as openai-community/gpt2."""
    src = ck.write_checkpoint(tmp_path / "served",
                              ck.GPT2Shape(n_layer=1, n_embd=8, n_head=2, n_positions=16),
                              seed=3, tokenizer="copy")
    server = QuietServer(("127.0.0.1", 0), HubHandler)
    server.state = {"src": src, "repo": "openai-community/gpt2", "requests": [], "nonce": "x1"}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    killer = threading.Timer(SERVER_LIFETIME, server.shutdown)
    killer.daemon = True
    killer.start()
    server.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield server
    finally:
        killer.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def fetch(args, endpoint, tmp_path, extra_env=None):
    env = dict(os.environ)
    for k in ("HF_TOKEN", "HF_ENDPOINT", "GPT2_WEIGHTS_DIR"):
        env.pop(k, None)
    env["GPT2_HF_ENDPOINT"] = endpoint
    env["GPT2_WEIGHTS_DIR"] = str(tmp_path / "weights")
    env.update(extra_env or {})
    cmd = ["bash", str(SCRIPT), *args]
    p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT)
    p.info = f"\ncommand: {' '.join(cmd)}\nexit code: {p.returncode}\nstdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-3000:]}"
    return p


def assert_same_files(src: Path, dest: Path):
    for f in FILES:
        assert (dest / f).is_file(), f"{f} missing in {dest}"
        assert (dest / f).read_bytes() == (src / f).read_bytes(), f"{f} differs"
    leftovers = sorted(p.name for p in dest.iterdir() if p.name not in FILES)
    assert not leftovers, f"left behind in {dest}: {leftovers}"


def test_download_and_verify(hub, tmp_path):
    p = fetch([], hub.endpoint, tmp_path)
    assert p.returncode == 0, p.info
    dest = tmp_path / "weights" / "gpt2"
    assert_same_files(hub.state["src"], dest)
    assert "model.safetensors: sha256 ok" in p.stderr, p.info
    assert "config.json: ok" in p.stderr and "model.safetensors: ok" in p.stderr, p.info
    paths = [r[1] for r in hub.state["requests"]]
    assert "/openai-community/gpt2/resolve/main/model.safetensors" in paths
    assert "/cdn/x1/model.safetensors" in paths, "redirect not followed"

    # Second run: everything is there, nothing is fetched.
    hub.state["requests"].clear()
    p = fetch([], hub.endpoint, tmp_path)
    assert p.returncode == 0, p.info
    assert hub.state["requests"] == [], hub.state["requests"]
    assert p.stderr.count("already present") == 4, p.info


def test_owner_repo_name_and_dest(hub, tmp_path):
    hub.state["repo"] = "someone/tiny-gpt2"
    p = fetch(["someone/tiny-gpt2"], hub.endpoint, tmp_path)
    assert p.returncode == 0, p.info
    assert_same_files(hub.state["src"], tmp_path / "weights" / "someone--tiny-gpt2")
    p = fetch(["--dest", str(tmp_path / "elsewhere"), "someone/tiny-gpt2"], hub.endpoint, tmp_path)
    assert p.returncode == 0, p.info
    assert_same_files(hub.state["src"], tmp_path / "elsewhere")


def test_resume_from_part_file(hub, tmp_path):
    dest = tmp_path / "weights" / "gpt2"
    dest.mkdir(parents=True)
    data = (hub.state["src"] / "model.safetensors").read_bytes()
    half = len(data) // 2
    (dest / "model.safetensors.part").write_bytes(data[:half])
    p = fetch([], hub.endpoint, tmp_path)
    assert p.returncode == 0, p.info
    assert_same_files(hub.state["src"], dest)
    assert ("GET", "/cdn/x1/model.safetensors", f"bytes={half}-") in hub.state["requests"], \
        hub.state["requests"]
    assert "sha256 ok" in p.stderr, p.info


def test_stale_part_without_range_support(hub, tmp_path):
    """A server that ignores Range: the .part is thrown away and refetched."""
    hub.state["ranges"] = False
    dest = tmp_path / "weights" / "gpt2"
    dest.mkdir(parents=True)
    (dest / "model.safetensors.part").write_bytes(b"garbage" * 100)
    p = fetch([], hub.endpoint, tmp_path)
    assert p.returncode == 0, p.info
    assert_same_files(hub.state["src"], dest)


def test_sha256_mismatch_is_refused(hub, tmp_path):
    hub.state["linked_etag"] = "0" * 64
    p = fetch([], hub.endpoint, tmp_path)
    assert p.returncode == 1, p.info
    assert "sha256 mismatch" in p.stderr, p.info
    assert not (tmp_path / "weights" / "gpt2" / "model.safetensors").exists()


def test_size_mismatch_is_refused(hub, tmp_path):
    data = (hub.state["src"] / "model.safetensors").read_bytes()
    hub.state["linked_size"] = len(data) + 1
    p = fetch([], hub.endpoint, tmp_path)
    assert p.returncode == 1, p.info
    assert "size mismatch" in p.stderr, p.info
    assert not (tmp_path / "weights" / "gpt2" / "model.safetensors").exists()


def test_not_gpt2_config_is_refused(hub, tmp_path):
    cfg = hub.state["src"] / "config.json"
    cfg.write_text(cfg.read_text().replace('"model_type": "gpt2"', '"model_type": "llama"'))
    p = fetch([], hub.endpoint, tmp_path)
    assert p.returncode == 1, p.info
    assert "model_type" in p.stderr, p.info
    assert not any(r[1].endswith("model.safetensors") for r in hub.state["requests"]), \
        "weights fetched despite a bad config.json"


def test_missing_repo_gives_404(hub, tmp_path):
    p = fetch(["nobody/nothing"], hub.endpoint, tmp_path)
    assert p.returncode == 1, p.info
    assert "404" in p.stderr, p.info


def test_bad_safetensors_header_is_refused(hub, tmp_path):
    st = hub.state["src"] / "model.safetensors"
    blob = bytearray(st.read_bytes())
    blob[0:8] = (10 ** 9).to_bytes(8, "little")
    st.write_bytes(bytes(blob))
    p = fetch([], hub.endpoint, tmp_path)
    assert p.returncode == 1, p.info
    assert "header length" in p.stderr, p.info


def test_unreachable_endpoint_is_no_network(tmp_path):
    p = fetch(["gpt2-medium"], "http://127.0.0.1:9", tmp_path)
    assert p.returncode == 1, p.info
    assert p.stderr.strip().splitlines() == [
        "no network: cannot reach 127.0.0.1:9; copy a checkpoint into "
        f"{tmp_path / 'weights' / 'gpt2-medium'}/ by hand (see weights/README)"], p.info
    assert not (tmp_path / "weights" / "gpt2-medium").exists(), "left an empty directory"


def test_default_endpoint_message_names_huggingface(tmp_path):
    """With no network at all the default endpoint fails with the same line.
    (Skipped where huggingface.co is actually reachable.)"""
    p = fetch(["--dest", str(tmp_path / "w"), "gpt2"], "https://huggingface.co", tmp_path,
              extra_env={"GPT2_HF_ENDPOINT": ""})
    if p.returncode == 0 or "no network" not in p.stderr:
        pytest.skip("huggingface.co seems reachable here")
    assert p.returncode == 1, p.info
    assert p.stderr.strip().splitlines()[-1].startswith("no network: cannot reach huggingface.co;")


@pytest.mark.parametrize("model,repo,dest", [
    ("gpt2", "openai-community/gpt2", "weights/gpt2/"),
    ("gpt2-medium", "openai-community/gpt2-medium", "weights/gpt2-medium/"),
    ("gpt2-large", "openai-community/gpt2-large", "weights/gpt2-large/"),
    ("gpt2-xl", "openai-community/gpt2-xl", "weights/gpt2-xl/"),
    ("distilgpt2", "distilbert/distilgpt2", "weights/distilgpt2/"),
    ("openai-community/gpt2", "openai-community/gpt2", "weights/openai-community--gpt2/"),
])
def test_dry_run_name_mapping(model, repo, dest):
    env = {k: v for k, v in os.environ.items()
           if k not in ("GPT2_HF_ENDPOINT", "HF_ENDPOINT", "GPT2_WEIGHTS_DIR")}
    p = subprocess.run(["bash", str(SCRIPT), "--dry-run", model], env=env, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert f"repo {repo}" in lines and f"dest {dest}" in lines, p.stdout
    assert f"url https://huggingface.co/{repo}/resolve/main/model.safetensors" in lines, p.stdout


@pytest.mark.parametrize("args", [["../evil"], ["a/b/c"], ["--bogus"], ["gpt2", "gpt2-xl"],
                                  ["--dest"], ["-r", "x y", "gpt2"]])
def test_bad_arguments_exit_2(args, tmp_path):
    p = fetch(args, "http://127.0.0.1:9", tmp_path)
    assert p.returncode == 2, p.info
    assert not (tmp_path / "weights").exists()
