// A real OpenID Connect issuer on loopback for the okta provider's tests: npm oidc-provider (installed by
// scripts/setup.sh into .tools/node), with its development login and consent pages, which accept any login name
// and password. Accounts (their email and groups) and clients come from the environment.
//   PORT=... OIDC_CLIENTS='[{"client_id": ..., "client_secret": ..., "redirect_uris": [...]}]'
//   OIDC_ACCOUNTS='{"olga": {"email": "olga@example.com", "groups": ["mcp-owners"]}}' node tests/oidc_issuer.mjs
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const accounts = JSON.parse(process.env.OIDC_ACCOUNTS || '{}');
const clients = JSON.parse(process.env.OIDC_CLIENTS || '[]');

const provider = new Provider(issuer, {
  clients,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
  // The device flow (RFC 8628) for `mcp-agent login --provider okta`; scope claims (groups) in the ID token too,
  // as an Okta groups claim filter on the ID token gives.
  features: { devInteractions: { enabled: true }, deviceFlow: { enabled: true } },
  conformIdTokenClaims: false,
  cookies: { keys: ['oidc-issuer-test-cookie-key'] },
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    const account = accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: account.email, email_verified: true, name: account.name || id,
                 preferred_username: id, groups: account.groups || [] };
      },
    };
  },
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc issuer ready at ${issuer}`);
});
