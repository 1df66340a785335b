// A real OpenID provider (node `oidc-provider`) for the dcr-sidecar test-suite and demo.
//
// One process = one Provider, configured by the JSON in $OIDC_TEST_CONFIG (every key optional):
//   port             0 (pick a free one)      listening port
//   host             "127.0.0.1"              listening address
//   issuerPath       ""                       "" -> issuer http://127.0.0.1:PORT,
//                                             "/tenant-a" -> http://127.0.0.1:PORT/tenant-a
//   iat              null                     null = open registration; a string = the
//                                             initial access token RFC 7591 POSTs must carry
//   secretExpiresIn  null                     null = client_secret_expires_at 0; N = now+N
//                                             (needs `iat`: set by a registration policy)
//   putExtendsExpiry true                     RFC 7592 PUT moves the expiry to now+N again
//   pkceRequired     false                    true = PKCE for every client, not only `none`
//   accessTokenTtl   3600                     seconds, access tokens and client_credentials
//   extraScopes      []                       scopes accepted besides the built-in list
//   clients          []                       pre-registered (static) clients: oidc-provider
//                                             client metadata, e.g. a private_key_jwt client
//                                             with the public `jwks` its assertions verify with
//   cimd             false                    true = Client ID Metadata Documents
//                                             (features.clientIdMetadataDocument): the provider
//                                             fetches https client_ids, loopback included (test
//                                             only: the library's special-use address block is
//                                             bypassed); trust a test CA with NODE_EXTRA_CA_CERTS
//
// Test instrumentation lives at the server root (never under the issuer prefix):
//   GET  /__test/stats     {"registrations", "registration_attempts", "clients", "deleted"}
//   GET  /__test/requests  every request seen (except /__test), oldest first, the last 100,000:
//                          {method, path, query_keys, auth_scheme, body_keys, client_id,
//                           route, status, assertion_kid}  (assertion_kid: the `kid` in the
//                           header of a client_assertion the request carried, else null)
//   POST /__test/reset     empty store, counters and request log: a provider restarted afresh
//   POST /__test/fault     {"status": 503|429, "seconds": N, "retryAfter": S}: for N seconds
//                          every provider request is answered `status` with Retry-After: S and
//                          {"error": "temporarily_unavailable", "error_description":
//                          "test fault"} (an AS overloaded; chaos soak)
//
// Once listening it prints exactly one line on stdout: {"issuer": "...", "port": N}. Anything
// else (the library's notices included) goes to stderr so that line stays machine-readable.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider, { errors } from 'oidc-provider';

// oidc-provider prints its "you SHOULD change ..." notices with console.info (stdout).
console.log = console.error;
console.info = console.error;

const CONFIG_DEFAULTS = {
  port: 0,
  host: '127.0.0.1',
  issuerPath: '',
  iat: null,
  secretExpiresIn: null,
  putExtendsExpiry: true,
  pkceRequired: false,
  accessTokenTtl: 3600,
  extraScopes: [],
  clients: [],
  cimd: false,
};

// Scopes beyond the OpenID ones: they are what a resource server (resource indicator) grants.
const API_SCOPES = ['api:read', 'api:write', 'api:admin'];
const OIDC_SCOPES = ['openid', 'profile', 'email', 'offline_access'];

const SECRET_EXPIRY_POLICY = 'test-secret-expiry';

function fail(message) {
  process.stderr.write(`oidc test server: ${message}\n`);
  process.exit(2);
}

function loadConfig() {
  let raw = {};
  if (process.env.OIDC_TEST_CONFIG) {
    try {
      raw = JSON.parse(process.env.OIDC_TEST_CONFIG);
    } catch (err) {
      fail(`OIDC_TEST_CONFIG is not JSON: ${err.message}`);
    }
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    fail('OIDC_TEST_CONFIG must be a JSON object');
  }
  // A typo in a key would silently give the default: refuse it instead.
  const unknown = Object.keys(raw).filter((key) => !(key in CONFIG_DEFAULTS));
  if (unknown.length) fail(`unknown OIDC_TEST_CONFIG keys: ${unknown.join(', ')}`);

  const config = { ...CONFIG_DEFAULTS };
  for (const [key, value] of Object.entries(raw)) {
    if (value !== null && value !== undefined) config[key] = value;
  }

  if (!Number.isInteger(config.port) || config.port < 0 || config.port > 65535) fail('port must be an integer 0..65535');
  if (typeof config.host !== 'string' || !config.host) fail('host must be a non-empty string');
  if (typeof config.issuerPath !== 'string') fail('issuerPath must be a string');
  config.issuerPath = config.issuerPath.replace(/\/+$/, '');
  if (config.issuerPath && !/^(\/[A-Za-z0-9._~-]+)+$/.test(config.issuerPath)) {
    fail('issuerPath must be "" or like "/tenant-a"');
  }
  if (config.iat !== null && (typeof config.iat !== 'string' || !config.iat)) fail('iat must be null or a non-empty string');
  if (config.secretExpiresIn !== null) {
    if (!Number.isInteger(config.secretExpiresIn) || config.secretExpiresIn <= 0) fail('secretExpiresIn must be a positive integer');
    // Registration policies are attached to an initial access token, so no IAT, no policy.
    if (config.iat === null) fail('secretExpiresIn needs iat (the expiry is set by an IAT registration policy)');
  }
  if (typeof config.putExtendsExpiry !== 'boolean') fail('putExtendsExpiry must be a boolean');
  if (typeof config.pkceRequired !== 'boolean') fail('pkceRequired must be a boolean');
  if (typeof config.cimd !== 'boolean') fail('cimd must be a boolean');
  if (!Number.isInteger(config.accessTokenTtl) || config.accessTokenTtl <= 0) fail('accessTokenTtl must be a positive integer');
  if (!Array.isArray(config.extraScopes) || !config.extraScopes.every((s) => typeof s === 'string' && /^[\x21\x23-\x5B\x5D-\x7E]+$/.test(s))) {
    fail('extraScopes must be a list of scope tokens');
  }
  if (!Array.isArray(config.clients) || !config.clients.every((c) => c && typeof c === 'object' && typeof c.client_id === 'string')) {
    fail('clients must be a list of client metadata objects with client_id');
  }
  return config;
}

const config = loadConfig();
const epochTime = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------------------------------------
// Storage: an unbounded Map. The library's memory adapter is an LRU of 1,000 entries shared by
// clients and tokens, so registered clients vanish under token load — tests must not see that.
// ---------------------------------------------------------------------------------------------

const store = new Map(); // `${model}:${id}` -> { payload, expiresAt (ms) | undefined }
const grantIndex = new Map(); // grantId -> Set of store keys of tokens issued under it
const GRANTABLE = new Set([
  'AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest', 'PreAuthorizedCode',
]);

function liveEntry(key) {
  const entry = store.get(key);
  if (entry && entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry;
}

class MapAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    const key = this.key(id);
    store.set(key, { payload, expiresAt });
    if (this.model === 'Session' && payload.uid) {
      store.set(`sessionUid:${payload.uid}`, { payload: id, expiresAt });
    }
    if (payload.userCode) {
      store.set(`userCode:${payload.userCode}`, { payload: id, expiresAt });
    }
    if (GRANTABLE.has(this.model) && payload.grantId) {
      if (!grantIndex.has(payload.grantId)) grantIndex.set(payload.grantId, new Set());
      grantIndex.get(payload.grantId).add(key);
    }
  }

  async find(id) {
    return liveEntry(this.key(id))?.payload;
  }

  async findByUid(uid) {
    const id = liveEntry(`sessionUid:${uid}`)?.payload;
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = liveEntry(`userCode:${userCode}`)?.payload;
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const entry = liveEntry(this.key(id));
    if (entry) entry.payload.consumed = epochTime();
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantIndex.get(grantId) ?? []) store.delete(key);
    grantIndex.delete(grantId);
  }
}

// Unbounded also means nothing is ever evicted: drop expired entries now and then.
setInterval(() => {
  for (const key of store.keys()) liveEntry(key);
  for (const [grantId, keys] of grantIndex) {
    for (const key of keys) if (!store.has(key)) keys.delete(key);
    if (!keys.size) grantIndex.delete(grantId);
  }
}, 30_000).unref();

// ---------------------------------------------------------------------------------------------
// Instrumentation state
// ---------------------------------------------------------------------------------------------

const counters = { registrations: 0, registrationAttempts: 0, cimdFetches: 0 };
let deleted = [];
let requestLog = [];
let fault = { status: 0, until: 0, retryAfter: 1 };

function authScheme(header) {
  if (!header) return null;
  const scheme = header.trim().split(/\s+/, 1)[0];
  const lower = scheme.toLowerCase();
  if (lower === 'basic') return 'Basic';
  if (lower === 'bearer') return 'Bearer';
  return scheme; // e.g. DPoP: reported as sent
}

// Bounded so that a load test cannot exhaust memory; far above what any functional test reads.
const REQUEST_LOG_LIMIT = 100_000;

// The `kid` of a client assertion's JOSE header (read, not verified: the provider verifies).
function assertionKid(body) {
  const assertion = body && typeof body === 'object' ? body.client_assertion : undefined;
  if (typeof assertion !== 'string') return null;
  try {
    const header = JSON.parse(Buffer.from(assertion.split('.')[0], 'base64url').toString('utf8'));
    return typeof header.kid === 'string' ? header.kid : null;
  } catch {
    return null;
  }
}

function recordRequest(req, {
  status, route = null, bodyKeys = [], clientId = null, kid = null,
}) {
  if (requestLog.length >= REQUEST_LOG_LIMIT) requestLog.shift();
  requestLog.push({
    method: req.method,
    path: req.wirePath,
    query_keys: req.wireQueryKeys,
    auth_scheme: authScheme(req.headers.authorization),
    body_keys: bodyKeys,
    client_id: clientId,
    route,
    status,
    assertion_kid: kid,
  });
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
  });
  res.end(text);
}

// ---------------------------------------------------------------------------------------------
// Provider
// ---------------------------------------------------------------------------------------------

function isHttpUrl(value) {
  const url = URL.parse(value);
  return url !== null && (url.protocol === 'http:' || url.protocol === 'https:') && !url.hash;
}

async function buildProvider(issuer) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
  const resourceScopes = [...API_SCOPES, ...config.extraScopes];

  const provider = new Provider(issuer, {
    adapter: MapAdapter,
    jwks: { keys: [signingKey] },
    clients: config.clients,
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },

    // Any login works: the login name becomes the subject.
    async findAccount(ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return {
            sub, name: sub, email: `${sub}@example.test`, email_verified: true,
          };
        },
      };
    },
    claims: {
      openid: ['sub'],
      profile: ['name'],
      email: ['email', 'email_verified'],
    },
    // A scope must be listed here to be registrable and to survive the filter on token requests.
    scopes: [...new Set([...OIDC_SCOPES, ...resourceScopes])],

    // The default only issues refresh tokens when offline_access was granted.
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),

    ...(config.pkceRequired ? { pkce: { required: () => true } } : {}),

    // Test only: the library's fetch refuses special-use addresses (loopback included) through
    // its own dispatcher; the documents a test serves live on 127.0.0.1, so drop it.
    ...(config.cimd ? {
      fetch: (url, options) => {
        const { dispatcher, ...rest } = options ?? {};
        counters.cimdFetches += 1;
        return globalThis.fetch(url, rest);
      },
    } : {}),

    ttl: {
      AccessToken: config.accessTokenTtl,
      ClientCredentials: config.accessTokenTtl,
      AuthorizationCode: 60,
      DeviceCode: 600,
      Grant: 14 * 24 * 3600,
      IdToken: 3600,
      Interaction: 3600,
      RefreshToken: 14 * 24 * 3600,
      Session: 14 * 24 * 3600,
    },

    // The library default (15 s) also delays the end of client secrets, tokens and codes by
    // that much; tests that wait for an expiry should not have to wait for slack too.
    clockTolerance: 0,

    // Everything here is loopback test traffic; a browser demo may call from any local origin.
    clientBasedCORS: () => true,

    features: {
      devInteractions: { enabled: true },
      registration: {
        enabled: true,
        // IAT mode stores one InitialAccessToken whose value is the configured string (seeded
        // below): a plain-string IAT cannot carry registration policies.
        initialAccessToken: config.iat !== null,
        // The library refuses policies without adapter-backed IATs, i.e. in open mode.
        ...(config.iat === null ? {} : {
          policies: {
            // Runs on the RFC 7591 POST and again on every RFC 7592 PUT, because the
            // registration access token inherits the IAT's policies. On PUT `properties`
            // already holds the stored expiry, so returning early keeps it
            // (putExtendsExpiry: false).
            [SECRET_EXPIRY_POLICY]: (ctx, properties) => {
              if (config.secretExpiresIn === null || !properties.client_secret) return;
              if (ctx.method === 'PUT' && !config.putExtendsExpiry && properties.client_secret_expires_at) return;
              properties.client_secret_expires_at = epochTime() + config.secretExpiresIn;
            },
          },
        }),
      },
      registrationManagement: { enabled: true },
      revocation: { enabled: true },
      introspection: {
        enabled: true,
        // The library default, spelled out to silence its notice: public clients may only
        // introspect their own tokens.
        allowedPolicy: async (ctx, client, token) => !(client.clientAuthMethod === 'none' && token.clientId !== ctx.oidc.client.clientId),
      },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Any absolute http(s) URL is a resource server; its access tokens are JWTs whose
        // audience is that URL alone.
        async getResourceServerInfo(ctx, resourceIndicator) {
          if (!isHttpUrl(resourceIndicator)) {
            throw new errors.InvalidTarget('resource indicator must be an absolute http(s) URL');
          }
          return {
            scope: resourceScopes.join(' '),
            audience: resourceIndicator,
            accessTokenTTL: config.accessTokenTtl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
      pushedAuthorizationRequests: { enabled: true },
      deviceFlow: { enabled: true },
      clientIdMetadataDocument: { enabled: config.cimd, ack: config.cimd ? 'draft-02' : undefined },
    },
  });

  provider.on('registration_create.success', () => { counters.registrations += 1; });
  provider.on('registration_delete.success', (ctx, client) => { deleted.push(client.clientId); });

  // Log after the provider handled the request, from what it parsed: reading the body stream
  // here would starve the provider of it.
  provider.use(async (ctx, next) => {
    if (ctx.method === 'POST' && ctx.path === '/reg') counters.registrationAttempts += 1;
    try {
      await next();
    } finally {
      let oidc;
      try {
        oidc = ctx.oidc;
      } catch {
        oidc = undefined;
      }
      const body = oidc?.body;
      recordRequest(ctx.req, {
        status: ctx.status,
        route: oidc?.route ?? null,
        bodyKeys: body && typeof body === 'object' ? Object.keys(body) : [],
        clientId: oidc?.entities?.Client?.clientId ?? null,
        kid: assertionKid(body),
      });
    }
  });

  return provider;
}

async function seedInitialAccessToken(provider) {
  if (config.iat === null) return;
  const iat = new provider.InitialAccessToken({
    jti: config.iat,
    policies: config.secretExpiresIn === null ? undefined : [SECRET_EXPIRY_POLICY],
  });
  await iat.save();
}

// ---------------------------------------------------------------------------------------------
// HTTP front: instrumentation, RFC 8414 path-insertion metadata, the issuer prefix
// ---------------------------------------------------------------------------------------------

let provider;
let providerCallback;

async function handleTest(req, res, path) {
  if (req.method === 'GET' && path === '/__test/stats') {
    const clients = [];
    for (const key of store.keys()) {
      if (key.startsWith('Client:') && liveEntry(key)) clients.push(key.slice('Client:'.length));
    }
    sendJson(res, 200, {
      registrations: counters.registrations,
      registration_attempts: counters.registrationAttempts,
      cimd_fetches: counters.cimdFetches,
      clients,
      deleted,
    });
  } else if (req.method === 'GET' && path === '/__test/requests') {
    sendJson(res, 200, requestLog);
  } else if (req.method === 'POST' && path === '/__test/fault') {
    let body = '';
    for await (const chunk of req) body += chunk;
    const asked = JSON.parse(body || '{}');
    fault = { status: asked.status, until: Date.now() + 1000 * asked.seconds,
              retryAfter: asked.retryAfter ?? 1 };
    sendJson(res, 200, { fault: true });
  } else if (req.method === 'POST' && path === '/__test/reset') {
    req.resume(); // no body expected; drain whatever came
    store.clear();
    grantIndex.clear();
    counters.registrations = 0;
    counters.registrationAttempts = 0;
    counters.cimdFetches = 0;
    deleted = [];
    requestLog = [];
    await seedInitialAccessToken(provider);
    sendJson(res, 200, { reset: true });
  } else {
    sendJson(res, 404, { error: 'not_found' });
  }
}

// Maps a wire path to the provider-relative path (without the issuer prefix), or null if the
// path is not the provider's.
function providerPath(path) {
  const prefix = config.issuerPath;
  // RFC 8414 §3.1 puts the well-known segment before the issuer path; OIDC Discovery appends
  // it. The library only serves the latter, so answer the former with the same document.
  for (const wellKnown of ['/.well-known/oauth-authorization-server', '/.well-known/openid-configuration']) {
    if (path === wellKnown + prefix) return '/.well-known/openid-configuration';
  }
  if (!prefix) return path;
  if (path === prefix) return '/';
  if (path.startsWith(`${prefix}/`)) return path.slice(prefix.length);
  return null;
}

async function handle(req, res) {
  let url;
  try {
    url = new URL(req.url, 'http://127.0.0.1');
  } catch {
    sendJson(res, 400, { error: 'invalid_request', error_description: 'bad request target' });
    return;
  }
  const path = url.pathname;
  if (path.startsWith('/__test/')) {
    await handleTest(req, res, path);
    return;
  }

  req.wirePath = path;
  req.wireQueryKeys = [...new Set(url.searchParams.keys())];

  if (Date.now() < fault.until) {
    req.resume();
    res.setHeader('Retry-After', String(fault.retryAfter));
    sendJson(res, fault.status, { error: 'temporarily_unavailable', error_description: 'test fault' });
    recordRequest(req, { status: fault.status });
    return;
  }

  const inner = providerPath(path);
  if (inner === null || !providerCallback) {
    req.resume();
    const status = inner === null ? 404 : 503;
    sendJson(res, status, { error: inner === null ? 'not_found' : 'starting' });
    recordRequest(req, { status });
    return;
  }
  // The provider derives its mount path from originalUrl minus url; keep both consistent so
  // every URL it builds (metadata, redirects, cookies) carries the issuer prefix.
  req.url = inner + url.search;
  req.originalUrl = config.issuerPath + req.url;
  providerCallback(req, res);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error(err);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
    else res.destroy();
  });
});

server.on('error', (err) => fail(`cannot listen: ${err.message}`));

server.listen(config.port, config.host, async () => {
  const { port } = server.address();
  let issuerHost = config.host;
  if (issuerHost === '0.0.0.0' || issuerHost === '::') issuerHost = '127.0.0.1';
  else if (issuerHost.includes(':')) issuerHost = `[${issuerHost}]`;
  const issuer = `http://${issuerHost}:${port}${config.issuerPath}`;
  try {
    provider = await buildProvider(issuer);
    await seedInitialAccessToken(provider);
  } catch (err) {
    console.error(err);
    process.exit(1);
  }
  providerCallback = provider.callback();
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  // Never hang a test run on a stuck socket.
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

// Set by the Python launcher, whose pipe to our stdin closes when it dies however it dies.
if (process.env.OIDC_TEST_PARENT_PIPE === '1') {
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}
