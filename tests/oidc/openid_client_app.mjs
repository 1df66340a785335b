// An unmodified `openid-client` (v6, the certified JavaScript relying party) app in front of
// dcr-sidecar, for tests/test_openid_client.py, in one of two styles (MODE):
//   oauth2  its own discovery of the sidecar's issuer (app_issuer: sidecar), a placeholder
//           client_id, no client authentication towards the sidecar; then code flow, refresh,
//           introspection, revocation, PAR and client_credentials.
//   oidc    the sidecar's document fetched by the app and the real client_id from /client
//           (app_issuer: upstream: the ID token's issuer is the AS's); a code flow whose ID
//           token the library validates.
//
// Environment: MODE, SIDECAR_ISSUER (oauth2: the sidecar's issuer; oidc: the sidecar's
// upstream base URL, e.g. http://127.0.0.1:8080/acme), REDIRECT_URI, SCOPE.
// Protocol, one JSON object per line:
//   stdout {"step": "authorize", "url": ...}   the browser must go there; then on stdin
//   stdin  {"callback": ...}                   the URL the browser came back to
//   stdout {"step": "done", ...}               what every call returned
// Anything else goes to stderr. Exit code 0 only when every call succeeded.

import * as readline from 'node:readline';

import * as client from 'openid-client';

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function send(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

async function browser(url) {
  send({ step: 'authorize', url: url.href });
  const { value, done } = await lines.next();
  if (done) throw new Error('stdin closed before the callback URL arrived');
  return new URL(JSON.parse(value).callback);
}

async function codeFlow(config, usePar, nonce) {
  const verifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const parameters = {
    ...(nonce ? { nonce } : {}),
    redirect_uri: process.env.REDIRECT_URI,
    scope: process.env.SCOPE,
    state,
    prompt: 'consent',
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
  };
  const url = usePar
    ? await client.buildAuthorizationUrlWithPAR(config, parameters)
    : client.buildAuthorizationUrl(config, parameters);
  const callback = await browser(url);
  // Checks state, the RFC 9207 iss against the discovered issuer, and the code exchange.
  return client.authorizationCodeGrant(config, callback, {
    pkceCodeVerifier: verifier,
    expectedState: state,
    ...(nonce ? { expectedNonce: nonce } : {}),
  });
}

async function oidc() {
  const base = process.env.SIDECAR_ISSUER;
  const document = await (await fetch(`${base}/.well-known/openid-configuration`)).json();
  const { client_id: clientId } = await (await fetch(`${base}/client`)).json();
  const config = new client.Configuration(document, clientId, undefined, client.None());
  client.allowInsecureRequests(config); // loopback http in tests only
  const tokens = await codeFlow(config, false, client.randomNonce());
  send({ step: 'done', issuer: document.issuer, clientId, tokens, claims: tokens.claims() });
}

async function oauth2() {
  const config = await client.discovery(
    new URL(process.env.SIDECAR_ISSUER),
    'placeholder',
    undefined,
    client.None(),
    { execute: [client.allowInsecureRequests] }, // loopback http in tests only
  );
  const metadata = config.serverMetadata();
  const tokens = await codeFlow(config, false);
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
  const introspection = await client.tokenIntrospection(config, refreshed.access_token);
  await client.tokenRevocation(config, refreshed.access_token);
  const revoked = await client.tokenIntrospection(config, refreshed.access_token);
  const par = await codeFlow(config, true);
  const credentials = await client.clientCredentialsGrant(config, { scope: 'api:read' });
  send({
    step: 'done',
    issuer: metadata.issuer,
    tokens,
    refreshed,
    introspection,
    revoked,
    par,
    credentials,
  });
}

(process.env.MODE === 'oidc' ? oidc() : oauth2()).then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`openid-client app failed: ${err?.stack ?? err}\n`);
    if (err?.cause) process.stderr.write(`cause: ${JSON.stringify(err.cause)}\n`);
    process.exit(1);
  },
);
