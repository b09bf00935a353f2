// A loopback OpenID Connect provider configured like Pro Santé Connect, for tests/psc.rs.
//
//   node tests/oidc/provider.mjs PORT ACCOUNTS.json REDIRECT_URI [TLS_DIR MTLS_PORT]
//
// - issuer http://127.0.0.1:PORT; discovery also at /.well-known/wallet-openid-configuration
//   (PSC's non-standard path);
// - with TLS_DIR (ca.pem, server.pem, server-key.pem made by the test): issuer
//   https://127.0.0.1:PORT, and a second HTTPS listener on MTLS_PORT that asks for a client
//   certificate, published as the `mtls_endpoint_aliases` (token, userinfo, introspection),
//   as PSC does; the main listener asks for none, so tls_client_auth works only there;
// - scopes openid and scope_all (which carries the PSC claims: SubjectNameID, SubjectRefPro…);
// - acr values eidas1 (what PSC uses), eidas2, eidas3 (for the refusal tests);
// - PKCE S256 required; introspection and userinfo (JSON, or a signed JWT for the RS256 client);
// - clients: `passerelle` (client_secret_basic, HS256 ID tokens), `passerelle-rs256`
//   (client_secret_basic, RS256 ID tokens and signed userinfo) and `passerelle-mtls`
//   (tls_client_auth with a certificate of the test CA whose subject is CN=passerelle-mtls,
//   RS256 ID tokens);
// - a non-interactive login for tests: /interaction/:uid signs in the account named by
//   `login_hint` (default: the first of ACCOUNTS.json) at the level `test_acr` (default
//   eidas1) and grants the requested scopes. ACCOUNTS.json maps SubjectNameID → userinfo;
//   it is read again at each use, so a test may change someone's claims.
// Prints `ready` on stdout once listening.
import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, accountsFile, redirectUri, tlsDir, mtlsPort] = process.argv.slice(2);
if (!port || !accountsFile || !redirectUri || (tlsDir && !mtlsPort)) {
  console.error('usage: provider.mjs PORT ACCOUNTS.json REDIRECT_URI [TLS_DIR MTLS_PORT]');
  process.exit(2);
}
const accounts = () => JSON.parse(readFileSync(accountsFile, 'utf8'));
const issuer = `${tlsDir ? 'https' : 'http'}://127.0.0.1:${port}`;
const mtlsBase = tlsDir ? `https://127.0.0.1:${mtlsPort}` : undefined;
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const rsaJwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', use: 'sig', alg: 'RS256' };

// PSC's sub is a Keycloak federated id, never the business key (SubjectNameID)
const FEDERATED = 'f:550dc1c8-d97b-4b1e-ac8c-8eb4471cf9dd:';
const subjectNameId = (accountId) => accountId.replace(FEDERATED, '');

// the acr of each account's last login: PSC puts it in introspection answers
const lastAcr = new Map();

const claimNames = [
  'SubjectNameID', 'preferred_username', 'given_name', 'family_name', 'email_verified',
  'codeCivilite', 'SubjectOrganization', 'SubjectOrganizationID', 'SubjectRole',
  'Secteur_Activite', 'Palier_Authentification', 'Mode_Acces_Raison', 'Acces_Regulation_Medicale',
  'UITVersion', 'PSI_Locale', 'otherIds', 'SubjectRefPro',
];

const common = {
  client_secret: 'psc-test-client-secret-0123456789abcdef',
  redirect_uris: redirectUri.split(','),
  post_logout_redirect_uris: redirectUri.split(',').map((u) => u.replace(/\/auth\/callback$/, '/auth/logged-out')),
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
};

// the client certificate of a TLS socket (none on plain http, or when none was sent)
const peerCertificate = (ctx) => {
  const peer = ctx.socket.getPeerCertificate?.();
  return peer && peer.raw ? peer : undefined;
};

const provider = new Provider(issuer, {
  clients: [
    { ...common, client_id: 'passerelle', id_token_signed_response_alg: 'HS256' },
    {
      ...common,
      client_id: 'passerelle-rs256',
      id_token_signed_response_alg: 'RS256',
      userinfo_signed_response_alg: 'RS256',
    },
    {
      ...common,
      client_id: 'passerelle-mtls',
      client_secret: undefined,
      token_endpoint_auth_method: 'tls_client_auth',
      tls_client_auth_subject_dn: 'CN=passerelle-mtls',
      id_token_signed_response_alg: 'RS256',
    },
  ],
  jwks: { keys: [rsaJwk] },
  enabledJWA: {
    idTokenSigningAlgValues: ['HS256', 'RS256'],
    userinfoSigningAlgValues: ['HS256', 'RS256'],
  },
  clientAuthMethods: ['client_secret_basic', 'tls_client_auth'],
  scopes: ['openid', 'scope_all'],
  claims: { openid: ['sub'], scope_all: claimNames },
  acrValues: ['eidas1', 'eidas2', 'eidas3'],
  extraParams: ['test_acr'],
  features: {
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    userinfo: { enabled: true },
    jwtUserinfo: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    mTLS: {
      enabled: true,
      tlsClientAuth: true,
      getCertificate(ctx) {
        const peer = peerCertificate(ctx);
        return peer ? new X509Certificate(peer.raw) : undefined;
      },
      // the alias listener trusts the test CA only: node says whether the chain verified
      certificateAuthorized(ctx) {
        return ctx.socket.authorized === true;
      },
      certificateSubjectMatches(ctx, property, expected) {
        const peer = peerCertificate(ctx);
        return property === 'tls_client_auth_subject_dn' && peer !== undefined
          && `CN=${peer.subject.CN}` === expected;
      },
    },
  },
  discovery: mtlsBase ? {
    mtls_endpoint_aliases: {
      token_endpoint: `${mtlsBase}/token`,
      userinfo_endpoint: `${mtlsBase}/me`,
      introspection_endpoint: `${mtlsBase}/token/introspection`,
    },
  } : {},
  pkce: { required: () => true },
  ttl: { AccessToken: 120, AuthorizationCode: 60, IdToken: 3600, Interaction: 600, Session: 14400, Grant: 14400 },
  cookies: { keys: ['passerelle-test-cookie-key'] },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, accountId) {
    const info = accounts()[subjectNameId(accountId)];
    if (!info) return undefined;
    return { accountId, async claims() { return { ...info, sub: accountId }; } };
  },
  async extraTokenClaims(ctx, token) {
    if (!token.accountId) return undefined;
    return { acr: lastAcr.get(token.accountId) ?? 'eidas1', SubjectNameID: subjectNameId(token.accountId) };
  },
  renderError(ctx, out) {
    ctx.type = 'application/json';
    ctx.body = out;
  },
});

async function interaction(req, res) {
  try {
    const details = await provider.interactionDetails(req, res);
    const { prompt, params, session } = details;
    let result;
    if (prompt.name === 'login') {
      const id = FEDERATED + (params.login_hint || Object.keys(accounts())[0]);
      const acr = params.test_acr || 'eidas1';
      lastAcr.set(id, acr);
      result = { login: { accountId: id, acr, amr: ['pwd'] } };
    } else if (prompt.name === 'consent') {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
      if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
      result = { consent: { grantId: await grant.save() } };
    } else {
      result = { error: 'access_denied', error_description: `unexpected prompt ${prompt.name}` };
    }
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
  } catch (e) {
    res.statusCode = 400;
    res.setHeader('content-type', 'text/plain');
    res.end(`interaction failed: ${e.message}`);
  }
}

const callback = provider.callback();
const handler = (req, res) => {
  if (req.url.startsWith('/.well-known/wallet-openid-configuration')) {
    req.url = req.url.replace('/wallet-openid-configuration', '/openid-configuration');
  }
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res);
    return;
  }
  callback(req, res);
};
const servers = [];
const listen = (server, p) => new Promise((done) => { server.listen(Number(p), '127.0.0.1', done); });
if (tlsDir) {
  const tls = (name) => readFileSync(join(tlsDir, name));
  const base = { key: tls('server-key.pem'), cert: tls('server.pem'), ca: tls('ca.pem') };
  servers.push([https.createServer(base, handler), port]);
  // asks for a certificate, and lets the provider refuse a missing or untrusted one with
  // an OAuth error rather than a failed handshake
  servers.push([https.createServer({ ...base, requestCert: true, rejectUnauthorized: false }, handler), mtlsPort]);
} else {
  servers.push([http.createServer(handler), port]);
}
Promise.all(servers.map(([server, p]) => listen(server, p))).then(() => console.log('ready'));
process.on('SIGTERM', () => Promise.all(servers.map(([server]) => new Promise((done) => server.close(done)))).then(() => process.exit(0)));
