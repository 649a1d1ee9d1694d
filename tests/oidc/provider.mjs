// A real OpenID provider for the console's sign-in tests: the certified
// `oidc-provider`, on 127.0.0.1, with one confidential client and the
// accounts below (its development login form takes any password).
//
//   node provider.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI
//
// Prints `ready <issuer>` once it listens. `GET /_test/tamper?mode=M` makes
// the token endpoint answer the next code exchanges with a forged ID token,
// so the tests can show Keyplane refuses each: `wrong_audience`,
// `bad_signature` (signed by another key under the provider's key id),
// `expired`, `replay` (the ID token of an earlier sign-in, whose nonce is not
// this one's) or `none` (honest again). `GET /_test/groups?sub=S&groups=a,b`
// changes an account's groups, as an administrator of the provider would.
import Provider from 'oidc-provider';
import { SignJWT, decodeJwt, exportJWK, generateKeyPair } from 'jose';

const [port, clientId, clientSecret, redirectUri] = process.argv.slice(2);
if (!redirectUri) {
  console.error('usage: node provider.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

const ACCOUNTS = {
  ada: { email: 'ada@example.com', name: 'Ada', groups: ['acme-admins'] },
  grace: { email: 'grace@example.com', name: 'Grace', groups: ['platform-admins'] },
  viewer: { email: 'viewer@example.com', name: 'Val', groups: ['acme-viewers', 'globex-viewers'] },
  nobody: { email: 'nobody@example.com', name: 'Nobody', groups: ['interns'] },
};

const signing = await generateKeyPair('RS256', { extractable: true });
const forger = await generateKeyPair('RS256', { extractable: true });
const jwk = { ...(await exportJWK(signing.privateKey)), kid: 'k1', alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys: [jwk] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
  // Scope claims go into the ID token, where Keyplane reads them.
  conformIdTokenClaims: false,
  cookies: { keys: ['keyplane-test-cookie-key'] },
  features: { devInteractions: { enabled: true } },
  findAccount: async (_ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, email_verified: true, ...(ACCOUNTS[sub] ?? { email: `${sub}@example.com`, groups: [] }) }),
  }),
});

let tamper = 'none';
let earlier = null;
const forge = async (claims, key) =>
  new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).sign(key);

provider.use(async (ctx, next) => {
  if (ctx.path === '/_test/tamper') {
    tamper = ctx.query.mode ?? 'none';
    ctx.body = { tamper };
    return;
  }
  if (ctx.path === '/_test/groups') {
    const sub = String(ctx.query.sub);
    const groups = String(ctx.query.groups ?? '').split(',').filter(Boolean);
    ACCOUNTS[sub] = { ...(ACCOUNTS[sub] ?? { email: `${sub}@example.com`, name: sub }), groups };
    ctx.body = { sub, groups };
    return;
  }
  await next();
  if (ctx.path !== '/token' || ctx.status !== 200 || !ctx.body?.id_token) return;
  const honest = ctx.body.id_token;
  const claims = decodeJwt(honest);
  const now = Math.floor(Date.now() / 1000);
  switch (tamper) {
    case 'wrong_audience':
      ctx.body.id_token = await forge({ ...claims, aud: 'someone-else' }, signing.privateKey);
      break;
    case 'bad_signature':
      ctx.body.id_token = await forge(claims, forger.privateKey);
      break;
    case 'expired':
      ctx.body.id_token = await forge({ ...claims, iat: now - 7200, exp: now - 3600 }, signing.privateKey);
      break;
    case 'replay':
      if (earlier) ctx.body.id_token = earlier;
      break;
    default:
      break;
  }
  earlier = honest;
});

provider.listen(Number(port), '127.0.0.1', () => console.log(`ready ${issuer}`));
