// A loopback OAuth 2.0 authorization server for Keyhole's end-to-end tests.
//
// oidc-provider does the protocol (authorization code with PKCE, refresh with rotation,
// revocation); this file configures one client from the environment, stands in for the user
// who logs in and consents, and adds a protected API and request counters for the tests.
//
// Environment: PORT (0 = any free port), CLIENT_ID, CLIENT_SECRET, REDIRECT_URI,
// CLIENT_AUTH (client_secret_basic | client_secret_post), ACCESS_TOKEN_TTL (seconds).

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    console.error(`oauth-server: ${name} must be set`);
    process.exit(2);
  }
  return value;
};

const CLIENT_ID = env('CLIENT_ID');
const CLIENT_SECRET = env('CLIENT_SECRET');
const REDIRECT_URI = env('REDIRECT_URI');
const CLIENT_AUTH = env('CLIENT_AUTH', 'client_secret_basic');
if (!['client_secret_basic', 'client_secret_post'].includes(CLIENT_AUTH)) {
  console.error(`oauth-server: unsupported CLIENT_AUTH ${CLIENT_AUTH}`);
  process.exit(2);
}
const ACCESS_TOKEN_TTL = Number(env('ACCESS_TOKEN_TTL', '60'));
const SCOPES = ['openid', 'offline_access', 'api:read'];

const stats = {
  token_requests: { authorization_code: 0, refresh_token: 0 },
  revocations: 0,
  // Requests to either endpoint refused for using the other client authentication method.
  wrong_client_auth: 0,
  // Requests to the API refused for want of a valid access token.
  api_unauthorized: 0,
};

// Every grant the played user consented to, for POST /test/revoke-all.
const grantIds = new Set();

// Every access token the API accepted, for POST /test/revoke-access.
const acceptedTokens = new Set();

// The issuer must carry the real port, so listen first and build the provider afterwards.
const server = createServer();
server.listen(Number(env('PORT', '0')), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = buildProvider(issuer);
  server.on('request', provider.callback());
  console.log(`oauth-server listening on ${issuer}`);
});

function buildProvider(issuer) {
  // A fresh signing key per run keeps oidc-provider off its shared development keys.
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });

  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        redirect_uris: [REDIRECT_URI],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        token_endpoint_auth_method: CLIENT_AUTH,
        scope: SCOPES.join(' '),
      },
    ],
    // Listing api:read among the provider's scopes, with no resource server configured, puts it
    // in the grant's OpenID scope: access tokens stay opaque, and /api/me can look them up.
    scopes: SCOPES,
    pkce: { required: () => true },
    ttl: { AccessToken: ACCESS_TOKEN_TTL },
    // One clock on loopback; the default 15 s of slack would keep expired tokens working.
    clockTolerance: 0,
    // oidc-provider drops offline_access from a request without prompt=consent, and by default
    // issues refresh tokens only for offline_access; the tests want one every time.
    issueRefreshToken: async (ctx, client) => client.clientId === CLIENT_ID,
    // Each refresh consumes the old token, so a test can prove the client stores the new one.
    rotateRefreshToken: true,
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
    },
    findAccount: (ctx, id) => ({ accountId: id, claims: () => ({ sub: id }) }),
    cookies: { keys: [randomBytes(32).toString('hex')] },
    jwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), alg: 'RS256', use: 'sig' }] },
  });

  provider.use(tokenEndpoints);
  provider.use(autoInteraction(provider));
  provider.use(testApi(provider));
  return provider;
}

// oidc-provider accepts client_secret_basic and client_secret_post interchangeably; enforce the
// configured one, so a test proves which one the client used. Checked before the provider runs,
// since it would consume the authorization code even if this answered an error afterwards.
function wrongClientAuth(ctx) {
  const basic = /^basic /i.test(ctx.get('authorization'));
  return CLIENT_AUTH === 'client_secret_basic' ? !basic : basic;
}

// Counts the requests to the token and revocation endpoints, those the provider refuses included:
// a test can tell "the client never tried" from "the provider said no".
async function tokenEndpoints(ctx, next) {
  if (ctx.method !== 'POST' || !['/token', '/token/revocation'].includes(ctx.path)) return next();

  if (wrongClientAuth(ctx)) {
    stats.wrong_client_auth += 1;
    ctx.status = 401;
    ctx.body = { error: 'invalid_client', error_description: `the client must use ${CLIENT_AUTH}` };
    return;
  }

  await next();
  if (ctx.path === '/token/revocation') {
    stats.revocations += 1;
  } else {
    // The provider parsed the body by now.
    const grantType = ctx.oidc?.params?.grant_type;
    if (Object.hasOwn(stats.token_requests, grantType)) stats.token_requests[grantType] += 1;
  }
}

// Plays the user: logs in as login_hint (or alice) and consents to every requested scope, so a
// client that follows redirects with a cookie jar lands on its redirect_uri.
function autoInteraction(provider) {
  return async (ctx, next) => {
    if (ctx.method !== 'GET' || !ctx.path.startsWith('/interaction/')) return next();

    const { prompt, params, session, grantId } = await provider.interactionDetails(ctx.req, ctx.res);
    let result;
    if (prompt.name === 'login') {
      result = { login: { accountId: params.login_hint || 'alice' } };
    } else {
      const grant = grantId
        ? await provider.Grant.find(grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      if (params.scope) grant.addOIDCScope(params.scope);
      const savedId = await grant.save();
      grantIds.add(savedId);
      result = { consent: { grantId: savedId } };
    }

    // Back to /auth/:uid, which resumes the authorization request with this result.
    ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, result));
  };
}

// GET /api/me stands in for the provider's API; GET /test/stats exposes the counters;
// POST /test/revoke-all revokes every grant with its tokens, as a user who disconnects the app in
// the provider's settings would, without the client knowing; POST /test/revoke-access revokes
// only the access tokens the API has accepted, as a provider that cuts tokens short does: the
// refresh tokens stay good.
function testApi(provider) {
  return async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/test/stats') {
      ctx.body = stats;
      return;
    }
    if (ctx.method === 'POST' && ctx.path === '/test/revoke-all') {
      for (const grantId of grantIds) {
        await provider.AccessToken.revokeByGrantId(grantId);
        await provider.RefreshToken.revokeByGrantId(grantId);
        await provider.Grant.adapter.destroy(grantId);
      }
      ctx.body = { revoked_grants: grantIds.size };
      grantIds.clear();
      return;
    }
    if (ctx.method === 'POST' && ctx.path === '/test/revoke-access') {
      let revoked = 0;
      for (const value of acceptedTokens) {
        const token = await provider.AccessToken.find(value);
        if (token) {
          await token.destroy();
          revoked += 1;
        }
      }
      acceptedTokens.clear();
      ctx.body = { revoked_access_tokens: revoked };
      return;
    }
    if (ctx.method !== 'GET' || ctx.path !== '/api/me') return next();

    const [, value] = ctx.get('authorization').match(/^bearer (\S+)$/i) ?? [];
    // find() gives nothing for unknown, expired or revoked tokens.
    const token = value ? await provider.AccessToken.find(value) : undefined;
    if (!token) {
      stats.api_unauthorized += 1;
      ctx.status = 401;
      ctx.set('WWW-Authenticate', 'Bearer error="invalid_token"');
      ctx.body = { error: 'invalid_token' };
      return;
    }
    acceptedTokens.add(value);
    ctx.body = { sub: token.accountId, scope: token.scope };
  };
}
