"""nginx as the token stub and as the reference proxy, from the templates in bench/nginx/."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from string import Template

from bench.procs import Proc, free_port, spawn, wait_http

TEMPLATES = Path(__file__).resolve().parent / "nginx"
TOKEN = {"access_token": "bench-access-token-0123456789abcdefghijklmnopqrstuvwxyz",
         "token_type": "Bearer", "expires_in": 3600, "scope": "api"}
TOKEN_JSON = json.dumps(TOKEN, separators=(",", ":"))


def render(template: str, out: Path, **values: str | int) -> Path:
    text = Template((TEMPLATES / template).read_text()).substitute(values)
    out.write_text(text)
    return out


class Nginx:
    """One nginx master (one worker) with a rendered config; stop() sends SIGQUIT to its PID."""

    def __init__(self, name: str, run_dir: Path) -> None:
        self.name = name
        self.dir = run_dir
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, template: str, **values: str | int) -> Nginx:
        render("common.conf", self.dir / f"{self.name}-common.conf", dir=str(self.dir),
               name=self.name)
        conf = render(template, self.dir / f"{self.name}.conf", dir=str(self.dir),
                      name=self.name, port=self.port, **values)
        self.proc = await spawn(self.name, ["nginx", "-p", str(self.dir), "-c", str(conf),
                                            "-e", str(self.dir / f"{self.name}-error.log")],
                                log_dir=self.dir)
        await wait_http(f"{self.url}/", self.proc, timeout=10)
        return self

    async def stop(self) -> None:
        if self.proc is not None:
            await self.proc.stop(signal.SIGQUIT)
            self.proc = None


async def stub(run_dir: Path, authorization: str) -> Nginx:
    """The token stub; it answers 401 to requests without exactly `authorization`."""
    return await Nginx("stub", run_dir).start("stub.conf", token_json=TOKEN_JSON,
                                              authorization=authorization)


async def reference_proxy(run_dir: Path, stub_port: int, authorization: str) -> Nginx:
    return await Nginx("nginx-proxy", run_dir).start(
        "proxy.conf", stub_port=stub_port, authorization=authorization)
