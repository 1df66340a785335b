// How a browser reads a URL: node's WHATWG URL class, one JSON string per input line, one JSON
// object per output line ({ok: false} when the URL Standard refuses it). Used by
// tests/test_redirect_uri_whatwg.py to check the sidecar's redirect-URI verdicts.
import readline from 'node:readline';

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  let out;
  try {
    const url = new URL(JSON.parse(line));
    out = {
      ok: true,
      href: url.href,
      protocol: url.protocol,
      username: url.username,
      password: url.password,
      hostname: url.hostname,
      port: url.port,
      pathname: url.pathname,
      search: url.search,
      hash: url.hash,
    };
  } catch {
    out = { ok: false };
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
}
